"""Merge Megatron indexed datasets (.bin/.idx) into one, in the order given.

Merging the outputs of shards gives the same bytes as preprocessing the concatenated shards.
The work is done by ettin_megatron.data.merge.
"""

import argparse
import sys

from ettin_megatron.data.merge import dataset_prefixes, merge_datasets
from ettin_megatron.data.readers import InputError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--input", nargs="+", required=True,
                   help="dataset prefixes (no .bin/.idx), or a directory: all its datasets, sorted")
    p.add_argument("--output-prefix", required=True, help="prefix of the merged dataset")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        counts = merge_datasets(dataset_prefixes(args.input), args.output_prefix)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"merged {counts['datasets']} datasets: {counts['documents']} documents, "
          f"{counts['tokens']} tokens -> {args.output_prefix}.bin/.idx", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
