"""Show an indexed dataset by eye: documents, tokens, a length histogram and decoded samples.

The work is done by ettin_megatron.data.inspect.
"""

import argparse
import sys

from ettin_megatron.data.inspect import inspect_dataset
from ettin_megatron.data.tokenizer import load_tokenizer
from ettin_megatron.errors import EttinError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("prefix", help="dataset prefix (no .bin/.idx)")
    p.add_argument("--tokenizer-model", help="decode samples with this tokenizer (else show ids)")
    p.add_argument("--samples", type=int, default=3, help="documents to show")
    p.add_argument("--max-chars", type=int, default=400, help="truncate each sample to this")
    p.add_argument("--seed", type=int, help="show random documents (default: the first ones)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        tokenizer = load_tokenizer(args.tokenizer_model) if args.tokenizer_model else None
        print(inspect_dataset(args.prefix, tokenizer, args.samples, args.max_chars, args.seed))
    except EttinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
