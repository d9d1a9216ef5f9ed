"""Show an indexed dataset by eye: documents, tokens, a length histogram and decoded samples.

The work is done by ettin_megatron.prep.inspect.
"""

import argparse
import sys

from ettin_megatron.cli import command_parser, non_negative_int, positive_int, run_command
from ettin_megatron.data.tokenizer import load_tokenizer
from ettin_megatron.prep.inspect import inspect_dataset


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__)
    p.add_argument("prefix", help="dataset prefix (or the name of its .bin or .idx file)")
    p.add_argument("--tokenizer-model", help="decode samples with this tokenizer (else show ids)")
    p.add_argument("--samples", type=non_negative_int, default=3, help="documents to show")
    p.add_argument("--max-chars", type=positive_int, default=400, help="truncate each sample to this")
    p.add_argument("--seed", type=non_negative_int, help="show random documents (default: the first ones)")
    return p


def main(argv=None) -> int:
    def show():
        args = parser().parse_args(argv)
        tokenizer = load_tokenizer(args.tokenizer_model) if args.tokenizer_model else None
        print(inspect_dataset(args.prefix, tokenizer, args.samples, args.max_chars, args.seed))

    return run_command(show)


if __name__ == "__main__":
    sys.exit(main())
