"""Does averaging the last checkpoints of a warmup-stable run beat its last checkpoint on held-out loss?

Ettin's phase 1 never decays its LR, so its raw checkpoints carry the noise of a constant-LR walk;
averaging the last few (tools/average_checkpoints.py) is the cheap remedy torchtitan users ask for. This
measures it on the tiny model rather than assuming it:

- Data and hyper-parameters: model_quality's (the offline sample corpus with every 50th document held
  out, its 4096-token BPE, the demo's tiny model, seq 128, global batch 32, AdamW lr 3e-3, 100 warm-up
  steps), but warmup-stable: ``--lr-decay-style constant`` for ``--steps`` steps, saving every
  ``--interval``.
- Per objective and seed: the run's last checkpoint against the uniform mean of its last K (for each
  ``--last`` K), all scored by tools/evaluate_run.py on the held-out prefix whole (``--split 0,1,0``),
  the same masks for every checkpoint.
- Reported: held-out loss of the last checkpoint and of each average, and the paired difference
  (average - last; negative: the average is better), its mean and standard error over seeds.

    python -m benchmarks.checkpoint_averaging --work-dir runs/averaging --seeds 21 22 23
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

from benchmarks.model_quality import pretrain_flags, prepare, sh
from ettin_megatron.checkpoint import saved_iterations


def train(objective: str, seed: int, steps: int, interval: int, prefix: str, tokenizer: str, work: Path) -> Path:
    """A warmup-stable run of ``steps`` steps saving every ``interval``; its --save directory."""
    save = work / f"{objective}-seed{seed}"
    if not saved_iterations(save) or saved_iterations(save)[-1].name != f"iter_{steps:07d}":
        sh(sys.executable, "-m", "ettin_megatron.pretrain",
           *pretrain_flags(objective, "document", steps, prefix, tokenizer, seed),
           "--lr-decay-style", "constant", "--save", str(save), "--save-interval", str(interval),
           "--num-workers", "0", log=work / f"{save.name}.log")
    return save


def heldout_losses(run: Path, lasts: list[int], heldout: str, tokenizer: str, work: Path) -> dict:
    """{"last": loss, K: loss of the mean of the last K, ...} on the held-out prefix."""
    averages = []
    for k in lasts:
        average = work / f"{run.name}-avg{k}"
        if not saved_iterations(average):
            sh(sys.executable, "tools/average_checkpoints.py", "--run", str(run), "--last", str(k),
               "--save", str(average), log=work / f"{average.name}.log")
        averages.append(average)
    out = work / f"{run.name}-eval"
    sh(sys.executable, "tools/evaluate_run.py", "--load", str(saved_iterations(run)[-1]), *map(str, averages),
       "--output", str(out), "--data-path", heldout, "--split", "0,1,0", "--tokenizer-model", tokenizer,
       "--seq-length", "128", "--micro-batch-size", "16", "--global-batch-size", "32", "--eval-iters", "2",
       "--no-sanity", log=work / f"{out.name}.log")
    with open(out / "heldout.csv") as file:
        rows = list(csv.DictReader(file))
    return {"last": float(rows[0]["loss"]), **{k: float(row["loss"]) for k, row in zip(lasts, rows[1:])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/averaging"))
    parser.add_argument("--objectives", nargs="+", default=["clm", "mlm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[21, 22, 23])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--interval", type=int, default=50)
    parser.add_argument("--last", nargs="+", type=int, default=[2, 4])
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    prefix, heldout, tokenizer = prepare(args.work_dir, None)
    print(f"| objective | seed | last ckpt (step {args.steps}) | " +
          " | ".join(f"mean of last {k} | diff" for k in args.last) + " |", flush=True)
    for objective in args.objectives:
        diffs = {k: [] for k in args.last}
        for seed in args.seeds:
            run = train(objective, seed, args.steps, args.interval, prefix, tokenizer, args.work_dir)
            loss = heldout_losses(run, args.last, heldout, tokenizer, args.work_dir)
            for k in args.last:
                diffs[k].append(loss[k] - loss["last"])
            print(f"| {objective} | {seed} | {loss['last']:.4f} | " +
                  " | ".join(f"{loss[k]:.4f} | {loss[k] - loss['last']:+.4f}" for k in args.last) + " |", flush=True)
        for k, values in diffs.items():
            error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
            better = sum(value < 0 for value in values)
            print(f"{objective}: mean of last {k} - last = {statistics.mean(values):+.4f} +- {error:.4f} "
                  f"(better in {better} of {len(values)} seeds)", flush=True)


if __name__ == "__main__":
    main()
