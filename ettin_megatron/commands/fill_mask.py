"""Show a fill-mask prediction from an exported Hugging Face encoder directory.

  python tools/fill_mask.py DIR "The Python [MASK] library provides functions." [--top-k 5]

Uses transformers' own pipeline("fill-mask") on the directory (offline), as a user of the released
model would. An MNTP-trained encoder (config.json: ``ettin_training_objective: "mntp"``) predicts a
masked token from the position before it, so for those the mask's scores are read there instead.
"""

from __future__ import annotations

import argparse
import sys

from ettin_megatron.cli import positive_int, run_command
from ettin_megatron.commands import model_and_text_parser


def parser() -> argparse.ArgumentParser:
    p = model_and_text_parser(__doc__, "exported HF directory (an encoder: ModernBertForMaskedLM)",
                              "text with the tokenizer's mask token, e.g. [MASK]")
    p.add_argument("--top-k", type=positive_int, default=5, help="how many predictions to print")
    return p


def fill_mask(model_dir: str, text: str, top_k: int = 5) -> list[dict]:
    """The pipeline's top-k predictions ({score, token_str, sequence, ...}) for the mask in ``text``."""
    from transformers import pipeline

    from ettin_megatron.convert.hf_files import read_exported_config
    from ettin_megatron.convert.hf_mapping import TRAINING_OBJECTIVE_KEY
    from ettin_megatron.errors import InputError

    fields = read_exported_config(model_dir, "bidirectional")

    fill = pipeline("fill-mask", model=model_dir, tokenizer=model_dir, device="cpu")
    mask = fill.tokenizer.mask_token
    if text.count(mask) != 1:
        raise InputError(f"the text must contain the mask token {mask} exactly once.")
    if fields.get(TRAINING_OBJECTIVE_KEY) == "mntp":
        return _next_token_fill(fill, text, top_k)
    return fill(text, top_k=top_k)


def _next_token_fill(fill, text: str, top_k: int) -> list[dict]:
    """The pipeline's output format, with the mask's scores from the output one position before it
    (MNTP: the output at i predicts token i + 1; [CLS] comes first, so the mask is never at 0)."""
    import torch

    tokenizer = fill.tokenizer
    batch = tokenizer(text, return_tensors="pt")
    ids = batch["input_ids"][0]
    position = int((ids == tokenizer.mask_token_id).nonzero()[0, 0])
    with torch.no_grad():
        probs = fill.model(**batch).logits[0, position - 1].float().softmax(-1)
    scores, tokens = probs.topk(top_k)
    predictions = []
    for score, token in zip(scores.tolist(), tokens.tolist()):
        filled = ids.clone()
        filled[position] = token
        predictions.append({"score": score, "token": token, "token_str": tokenizer.decode([token]),
                            "sequence": tokenizer.decode(filled, skip_special_tokens=True)})
    return predictions


def main(argv=None) -> int:
    def show():
        args = parser().parse_args(argv)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the per-tensor loading bar is noise for a CLI
        hf_logging.set_verbosity_error()  # errors are ours, in one line
        predictions = fill_mask(args.model_dir, args.text, args.top_k)
        print(args.text)
        for p in predictions:
            print(f"  {p['score']:.3f}  {p['token_str']!r:>16}  {p['sequence']!r}")

    return run_command(show)


if __name__ == "__main__":
    sys.exit(main())
