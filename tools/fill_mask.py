"""Show a fill-mask prediction from an exported Hugging Face encoder directory.

  python tools/fill_mask.py DIR "The Python [MASK] library provides functions." [--top-k 5]

Uses transformers' own pipeline("fill-mask") on the directory (offline), as a user of the released
model would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", help="exported HF directory (an encoder: ModernBertForMaskedLM)")
    p.add_argument("text", help="text with the tokenizer's mask token, e.g. [MASK]")
    p.add_argument("--top-k", type=int, default=5, help="how many predictions to print")
    return p


def fill_mask(model_dir: str, text: str, top_k: int = 5) -> list[dict]:
    """The pipeline's top-k predictions ({score, token_str, sequence, ...}) for the mask in ``text``."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise ValueError(f"{model_dir} has no config.json; pass an exported Hugging Face directory.")
    if json.loads(config.read_text()).get("model_type") != "modernbert":
        raise ValueError(f"{model_dir} is not an encoder (ModernBertForMaskedLM); fill-mask needs one.")
    from transformers import pipeline

    fill = pipeline("fill-mask", model=model_dir, tokenizer=model_dir, device="cpu")
    mask = fill.tokenizer.mask_token
    if text.count(mask) != 1:
        raise ValueError(f"the text must contain the mask token {mask} exactly once.")
    return fill(text, top_k=top_k)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor loading bar is noise for a CLI
    hf_logging.set_verbosity_error()  # errors are ours, in one line
    try:
        predictions = fill_mask(args.model_dir, args.text, args.top_k)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(args.text)
    for p in predictions:
        print(f"  {p['score']:.3f}  {p['token_str']!r:>16}  {p['sequence']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
