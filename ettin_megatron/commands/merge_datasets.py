"""Merge Megatron indexed datasets (.bin/.idx) into one, in the order given.

Merging the outputs of shards gives the same bytes as preprocessing the concatenated shards.
The work is done by ettin_megatron.prep.merge.
"""

import argparse
import sys

from ettin_megatron.cli import command_parser, run_command
from ettin_megatron.data.index_file import dataset_prefix
from ettin_megatron.prep.merge import dataset_prefixes, merge_datasets


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__)
    p.add_argument("--input", nargs="+", required=True,
                   help="dataset prefixes (or their .bin or .idx file names), or a directory: all its datasets, sorted")
    p.add_argument("--output-prefix", required=True, help="prefix of the merged dataset")
    return p


def main(argv=None) -> int:
    def merge():
        args = parser().parse_args(argv)
        output = dataset_prefix(args.output_prefix)
        counts = merge_datasets(dataset_prefixes(args.input), output)
        print(f"merged {counts['datasets']} datasets: {counts['documents']} documents, "
              f"{counts['tokens']} tokens -> {output}.bin/.idx", file=sys.stderr)

    return run_command(merge)


if __name__ == "__main__":
    sys.exit(main())
