"""Does a training step compute the same on the GPU as on the CPU? Where do they part?

The same --seed gives the same initial weights on any device (model/init.py draws them on the CPU)
and the same samples (numpy), so the first step's loss of a float32 run must agree between devices to
float rounding. On the model-quality benchmark's runs (2026-12-04) it did not: step 1 of the tiny
encoder read 8.315 on an H200 and 8.361 on the CPU (seed 21, same batch of 3,469 tokens), the decoder
8.337 and 8.344. This script says which of the weights, the first micro-batch or the forward pass
differ, and from which module on.

Run it twice on the GPU machine, the first time with the GPU hidden (the CPU path, CPU emulation and
all), with the model-quality benchmark's data (benchmarks/gpu_model_quality.sh prepares it):

    CUDA_VISIBLE_DEVICES= python -m benchmarks.device_parity --out cpu.json
    python -m benchmarks.device_parity --out gpu.json --compare cpu.json

Each run records, for pretrain's own setup (the demo's tiny model, seq 128, --data-layout document,
--objective mlm and clm): a sum of every initial weight, hashes of the first micro-batch's arrays, and
the mean absolute output of every module in the first forward (forward hooks), then the micro-batch's
loss. ``--compare`` prints the first entry of each kind whose relative difference exceeds 1e-4 and
exits 1 if any does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from functools import partial
from pathlib import Path

import torch

from benchmarks import model_quality  # the benchmark's flags and data

TOLERANCE = 1e-4


def record(objective: str, prefix: str, tokenizer: str) -> dict:
    """Initial weights, first micro-batch and first forward of pretrain's setup for ``objective``."""
    from ettin_megatron.training.arguments import parse_args
    from ettin_megatron.training.loop import setup
    from ettin_megatron.training.plan import plan_run
    from ettin_megatron.training.setup import unwrap

    args = parse_args(model_quality.pretrain_flags(objective, "document", 1, prefix, tokenizer, attention="sdpa"))
    run, *_ = setup(plan_run(args, 1), None)
    model = unwrap(run.model)[0]
    weights = {name: p.detach().double().sum().item() for name, p in model.named_parameters()}
    batch = next(run.train_batches)
    hashes = {key: hashlib.sha256(value.numpy().tobytes()).hexdigest()[:16]
              for key, value in batch.items() if torch.is_tensor(value)}
    outputs = {}

    def keep(name, module, inputs, output) -> None:  # a hook that returned a value would replace the output
        tensor = output[0] if isinstance(output, tuple) else output
        if torch.is_tensor(tensor):
            outputs.setdefault(name, tensor.detach().float().abs().mean().item())

    hooks = [module.register_forward_hook(partial(keep, name)) for name, module in model.named_modules() if name]
    forward = run.train_forward
    with torch.no_grad():
        output, loss_func = forward(iter([batch]), run.model[0])
        loss_sum, labelled, _ = loss_func(output)
    for hook in hooks:
        hook.remove()
    return {"weights": weights, "batch": hashes, "outputs": outputs,
            "loss": (loss_sum / labelled).item(), "device": str(next(model.parameters()).device)}


def compare(ours: dict, theirs: dict) -> bool:
    """Print the first disagreeing entry of each kind; True when everything agrees."""
    same = True
    for objective in ours:
        a, b = ours[objective], theirs[objective]
        print(f"{objective}: loss {a['loss']:.6f} ({a['device']}) vs {b['loss']:.6f} ({b['device']})")
        for kind in ("weights", "batch", "outputs"):
            for name, value in a[kind].items():
                other = b[kind].get(name)
                if isinstance(value, str):
                    differs = value != other
                else:
                    differs = other is None or abs(value - other) > TOLERANCE * max(abs(other), 1e-12)
                if differs:
                    print(f"  first {kind} difference: {name}: {value} vs {other}")
                    same = False
                    break
            else:
                print(f"  {kind}: all {len(a[kind])} agree")
        same &= abs(a["loss"] - b["loss"]) <= TOLERANCE * abs(b["loss"])
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default="runs/mq_gpu", help="model_quality.py's work directory (prepared)")
    parser.add_argument("--out", required=True, help="JSON file for this device's record")
    parser.add_argument("--compare", default=None, help="another device's record to compare with")
    opts = parser.parse_args()
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    prefix, _, tokenizer = model_quality.prepare(Path(opts.work_dir).resolve(), None)
    records = {objective: record(objective, prefix, tokenizer) for objective in ("mlm", "clm")}
    Path(opts.out).write_text(json.dumps(records, indent=1))
    if opts.compare:
        raise SystemExit(0 if compare(records, json.loads(Path(opts.compare).read_text())) else 1)
    print(json.dumps({objective: r["loss"] for objective, r in records.items()}))


if __name__ == "__main__":
    main()
