"""Train a small byte-level BPE tokenizer with ModernBERT's special tokens and [CLS] $A [SEP] template.

For the offline CPU demo: no network needed. The work is done by ettin_megatron.prep.train_tokenizer.
"""

import argparse
import sys

from ettin_megatron.cli import command_parser, positive_int, run_command
from ettin_megatron.prep.readers import expand_inputs
from ettin_megatron.prep.train_tokenizer import train_tokenizer


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__)
    p.add_argument("--input", nargs="+", required=True, help="JSONL files, globs or directories")
    p.add_argument("--json-key", default="text", help="key holding the text")
    p.add_argument("--output-dir", required=True, help="directory to write tokenizer.json etc. into")
    p.add_argument("--vocab-size", type=positive_int, default=4096,
                   help="tokens including the 5 specials; a multiple of 64")
    p.add_argument("--min-frequency", type=positive_int, default=2, help="least count of a merged pair")
    return p


def main(argv=None) -> int:
    def train():
        args = parser().parse_args(argv)
        paths = [path for spec in args.input for path in expand_inputs(spec)]
        tokenizer = train_tokenizer(paths, args.output_dir, args.vocab_size, args.json_key, args.min_frequency)
        print(f"wrote {args.output_dir}: vocabulary {tokenizer.get_vocab_size()}", file=sys.stderr)

    return run_command(train)


if __name__ == "__main__":
    sys.exit(main())
