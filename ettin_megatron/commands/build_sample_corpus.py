"""Write the offline sample corpus: English text that ships with CPython, as JSONL.

pydoc_data topics + standard-library docstrings (~1.8 MB, same bytes on every run of the same Python).
The work is done by ettin_megatron.prep.sample_corpus.
"""

import argparse
import sys

from ettin_megatron.cli import command_parser, run_command
from ettin_megatron.prep.sample_corpus import build_sample_corpus


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__)
    p.add_argument("--output", required=True, help="JSONL file to write (e.g. data/sample.jsonl)")
    return p


def main(argv=None) -> int:
    def build():
        args = parser().parse_args(argv)
        counts = build_sample_corpus(args.output)
        print(f"wrote {args.output}: {counts['documents']} documents, {counts['bytes']} bytes", file=sys.stderr)

    return run_command(build)


if __name__ == "__main__":
    sys.exit(main())
