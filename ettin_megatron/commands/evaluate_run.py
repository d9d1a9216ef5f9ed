"""Score every checkpoint of a run on held-out data: a table and a plot of held-out loss against tokens.

  python tools/evaluate_run.py --load RUN [RUN2 | iter_N ...] --data-path PREFIX --output DIR
         [--split 969,30,1 --seq-length L --data-layout ... --seed S --eval-iters E --global-batch-size G]
         [--objective mlm|clm|mntp] [--tokenizer-model T] [--sanity-text TEXT | --no-sanity]

--load takes a run's --save directory (all its complete iterations, oldest first) or iter_N directories,
at any TP / PP, averaged checkpoints included; each is loaded alone, at TP = PP = 1, in float32, on the
GPU when there is one. The held-out set is pretrain's validation set, in pretrain's flags and defaults:
the first --eval-iters x --global-batch-size samples of the validation split of --data-path under
--split, with the evaluation's fixed 15% masks (MLM / MNTP; CLM: next tokens), the same for every
checkpoint. Pass the run's own data flags and the loss is the one pretrain logged as "validation step N";
--split 0,1,0 scores a separate held-out prefix whole. --objective and --tokenizer-model default to the
checkpoint's.

Writes DIR/heldout.csv (one row per checkpoint: name, iteration, tokens consumed, loss, accuracy,
perplexity, labelled tokens, a digest of the masks, whether it is an average, the sanity line) and
DIR/heldout.png (loss against tokens consumed; averages are stars). The sanity line is a fill-mask
prediction (encoders) or a greedy continuation (decoders) of --sanity-text, from the checkpoint exported
to Hugging Face in a temporary directory (tools/fill_mask.py, tools/generate.py); --no-sanity skips it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ettin_megatron.cli import check_writable, command_parser, positive_int, run_command

TABLE, PLOT = "heldout.csv", "heldout.png"
ENCODER_TEXT, DECODER_TEXT = "The capital of France is [MASK].", "The capital of France is"


def parser() -> argparse.ArgumentParser:
    from ettin_megatron.evaluation.heldout import HELDOUT_FLAGS
    from ettin_megatron.training.arguments import add_run_flags

    p = command_parser(__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--load", nargs="+", required=True, metavar="CHECKPOINT",
                   help="run --save directories (every complete iteration) or iter_N directories")
    p.add_argument("--output", required=True, help=f"directory to write {TABLE} and {PLOT} in")
    p.add_argument("--sanity-text", default=None,
                   help=f"fill-mask text with the tokenizer's mask token (encoders; default {ENCODER_TEXT!r}) "
                        f"or a prompt (decoders; default {DECODER_TEXT!r})")
    p.add_argument("--sanity-tokens", type=positive_int, default=8, help="tokens a decoder generates")
    p.add_argument("--no-sanity", action="store_true", help="skip the fill-mask / generation line")
    held_out = p.add_argument_group("held-out set (pretrain's flags and defaults: pass the run's own)")
    add_run_flags(held_out, HELDOUT_FLAGS)
    return p


def run(args: argparse.Namespace) -> int:
    from ettin_megatron.errors import ConfigError
    from ettin_megatron.evaluation.heldout import HELDOUT_FLAGS, heldout_set, score
    from ettin_megatron.evaluation.plot import plot_available, plot_losses
    from ettin_megatron.evaluation.table import Row, write_table
    from ettin_megatron.evaluation.trajectory import find_checkpoints

    output = Path(args.output)
    check_writable(output, "--output")
    plot_available()
    checkpoints = find_checkpoints(args.load)
    heldout = heldout_set({name: getattr(args, name) for name in HELDOUT_FLAGS if hasattr(args, name)},
                          checkpoints)
    if not args.no_sanity and not heldout.args.data.tokenizer_model:
        raise ConfigError("the sanity line exports each checkpoint with its tokenizer, and none is known: pass "
                          "--tokenizer-model, or --no-sanity.")
    objective = heldout.args.model.objective
    print(f"scoring {len(checkpoints)} checkpoint{'s' * (len(checkpoints) != 1)} ({objective}) on "
          f"{heldout.describe()}", flush=True)
    rows = []
    for checkpoint in checkpoints:
        result = score(checkpoint, heldout)
        sanity = "" if args.no_sanity else sanity_line(checkpoint, heldout.args.data.tokenizer_model,
                                                        args.sanity_text, args.sanity_tokens)
        rows.append(Row(checkpoint, result, sanity))
        tokens = "?" if checkpoint.consumed_tokens is None else f"{checkpoint.consumed_tokens:,}"
        print(f"{checkpoint.name}{' (averaged)' if checkpoint.averaged else ''}: {tokens} tokens | held-out "
              f"{objective} loss {result.loss:.4f} | accuracy {result.accuracy:.4f} | tokens {result.labelled:,}"
              + (f" | {sanity}" if sanity else ""), flush=True)
    output.mkdir(parents=True, exist_ok=True)
    write_table(rows, output / TABLE)
    shown = plot_losses(rows, output / PLOT, f"Held-out loss of {_runs(checkpoints)}\n{heldout.describe()}",
                        objective)
    unplaced = len(rows) - shown
    print(f"wrote {output / TABLE} and {output / PLOT}"
          + (f" ({unplaced} checkpoints without a tokens position are in the table only)" if unplaced else ""))
    return 0


def sanity_line(checkpoint, tokenizer: str | None, text: str | None, new_tokens: int) -> str:
    """The checkpoint's fill-mask top 3 (encoder) or greedy continuation of ``new_tokens`` (decoder) of
    ``text``, from its Hugging Face export (with ``tokenizer``) in a temporary directory, through the
    fill-mask and generate commands."""
    from ettin_megatron.commands.fill_mask import fill_mask
    from ettin_megatron.commands.generate import generate
    from ettin_megatron.convert.export_hf import megatron_to_hf

    causal = checkpoint.description["model"]["attention"] == "causal"
    with tempfile.TemporaryDirectory(prefix="sanity-") as scratch:
        exported = str(megatron_to_hf(checkpoint.directory, Path(scratch) / "hf", tokenizer=tokenizer))
        if causal:
            prompt = text or DECODER_TEXT
            return f"{prompt} -> {generate(exported, prompt, new_tokens)!r}"  # quoted: one line, even with newlines
        text = text or ENCODER_TEXT
        predictions = fill_mask(exported, text, top_k=3)
        return f"{text} -> " + ", ".join(f"{p['token_str'].strip()!r} {p['score']:.3f}" for p in predictions)


def _runs(checkpoints) -> str:
    return ", ".join(dict.fromkeys(str(c.directory.parent.name) for c in checkpoints))


def main(argv=None) -> int:
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"megatron\.")
    return run_command(lambda: run(parser().parse_args(argv)))


if __name__ == "__main__":  # dist_checkpointing's reader may spawn a process that re-imports __main__
    sys.exit(main())
