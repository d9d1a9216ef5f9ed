"""Average the model weights of K checkpoints of one model (uniform or exponential weights) into one.

  --load CKPT CKPT [...] | --run DIR --last K
      The checkpoints (roots or iter_N directories), oldest first, each saved at any TP / PP; or the
      newest K complete iterations of the run saved under DIR.
  --weights uniform | exponential --decay D | W1 W2 ...
      uniform (default); exponential: checkpoint i of K weighs D ** (K - 1 - i), the newest most; or
      one number per checkpoint. The weights are normalized to sum to 1.
  --save CKPT | --output DIR
      A new weights-only checkpoint (TP = PP = 1, loads at any layout; train from it with
      --load CKPT --finetune), or a Hugging Face directory exported from it.

Only model weights are averaged: the optimizer state, the LR schedule and the data position are not
carried. Runs in one process on CPU (no torchrun); one source is in memory at a time. Bad input is
reported in one line (exit 2).
"""

from __future__ import annotations

import argparse
import sys

from ettin_megatron.cli import command_parser, positive_float, positive_int
from ettin_megatron.commands import run_conversion

NAMED_WEIGHTS = ("uniform", "exponential")


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sources = p.add_mutually_exclusive_group(required=True)
    sources.add_argument("--load", nargs="+", metavar="CKPT", help="checkpoints to average, oldest first")
    sources.add_argument("--run", metavar="DIR", help="a run's --save directory: average its newest --last K")
    p.add_argument("--last", type=positive_int, metavar="K", help="with --run: how many checkpoints")
    p.add_argument("--weights", nargs="+", default=["uniform"], metavar="W",
                   help="uniform, exponential (with --decay) or one number per checkpoint (default: uniform)")
    p.add_argument("--decay", type=positive_float, metavar="D",
                   help="with --weights exponential: each older checkpoint weighs D times the next")
    outputs = p.add_mutually_exclusive_group(required=True)
    outputs.add_argument("--save", metavar="CKPT", help="new (empty) checkpoint directory for the average")
    outputs.add_argument("--output", metavar="DIR", help="Hugging Face directory to export the average to "
                                                         "(replaced if an earlier export)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory / tokenizer.json (default: the one the checkpoints name)")
    return p


def checkpoint_paths(args) -> list:
    from ettin_megatron.convert.averaging import last_checkpoints
    from ettin_megatron.errors import ConfigError

    if args.run is None:
        if args.last is not None:
            raise ConfigError("--last counts the checkpoints of --run; with --load, list them.")
        return args.load
    if args.last is None:
        raise ConfigError("--run needs --last K (how many of its newest checkpoints to average).")
    return last_checkpoints(args.run, args.last)


def weights(args, count: int) -> tuple[list[float], str]:
    """(normalized weights, one per checkpoint; how they were chosen, for the record)."""
    from ettin_megatron.convert.averaging import exponential_weights, normalized, uniform_weights
    from ettin_megatron.errors import ConfigError

    named = args.weights[0] if len(args.weights) == 1 and args.weights[0] in NAMED_WEIGHTS else None
    if (named == "exponential") != (args.decay is not None):
        raise ConfigError("--weights exponential needs --decay D, and --decay applies to it only.")
    if named == "uniform":
        return uniform_weights(count), "uniform"
    if named == "exponential":
        return exponential_weights(count, args.decay), f"exponential, decay {args.decay}"
    try:
        values = [float(text) for text in args.weights]
    except ValueError:
        raise ConfigError(f"--weights takes uniform, exponential or one number per checkpoint, got "
                         f"{' '.join(args.weights)}.") from None
    if len(values) != count:
        raise ConfigError(f"--weights lists {len(values)} numbers for {count} checkpoints; give one per checkpoint.")
    return normalized(values), "explicit"


def run(args) -> int:
    from ettin_megatron.convert.averaging import average_checkpoints, average_to_hf, read_sources

    sources = read_sources(checkpoint_paths(args))
    chosen, weighting = weights(args, len(sources))
    if args.save is not None:
        written = average_checkpoints(sources, chosen, args.save, weighting, args.tokenizer)
        use = f"; train from it with --load {args.save} --finetune"
    else:
        written = average_to_hf(sources, chosen, args.output, weighting, args.tokenizer)
        use = ""
    listed = ", ".join(f"{source.directory} {weight:.4g}" for source, weight in zip(sources, chosen))
    print(f"wrote {written}: the mean of {len(sources)} checkpoints ({listed}; weights {weighting}); model weights "
          f"only, the optimizer state is not carried{use}")
    return 0


def main(argv=None) -> int:
    return run_conversion(run, parser, argv)


if __name__ == "__main__":  # dist_checkpointing's writer spawns a process that re-imports __main__
    sys.exit(main())
