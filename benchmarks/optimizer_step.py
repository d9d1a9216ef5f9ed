"""Optimizer step time and state memory: StableAdamW against megatron's AdamW, on the same model.

Each optimizer is built by training/optimizer.build_optimizer over the same model chunks (megatron DDP,
one process), every gradient is filled with the same random values, and one optimizer step (megatron's
step with its gradient norm, as train_step calls it) is timed: median over the timed steps after
warm-up. State memory is what the inner optimizer keeps per parameter (its tensors' bytes), against the
parameters' own bytes.

    python -m benchmarks.optimizer_step --size 150m            # CPU (the issue's cost check)
    python -m benchmarks.optimizer_step --size 150m --bf16 --distributed-optimizer   # GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ettin_megatron.runtime import initialize
from ettin_megatron.training.arguments import make_arguments
from ettin_megatron.training.optimizer import build_optimizer, optimizer_step
from ettin_megatron.training.plan import plan_model
from ettin_megatron.training.setup import build_model, build_model_config
from ettin_megatron.training.stable_adamw import wrappers

SETTINGS = {
    "adam": dict(optimizer="adam"),  # megatron's AdamW with --clip-grad 1.0, as the adam recipes run it
    "adam, no clip": dict(optimizer="adam", clip_grad=0.0),  # the update alone (the norm is still measured)
    "stableadamw": dict(optimizer="stableadamw", fully_decoupled_weight_decay=True),  # Ettin's, no clip
}


def state_bytes(optimizer) -> int:
    """Bytes of every tensor the inner optimizer(s) keep in their per-parameter state."""
    inner = [w.optimizer for w in wrappers(optimizer)]
    return sum(v.numel() * v.element_size() for opt in inner for state in opt.state.values()
               for v in state.values() if torch.is_tensor(v))


def measure(name: str, opts: argparse.Namespace) -> tuple[float, int, int]:
    """(median step seconds, optimizer state bytes, parameter bytes) of one optimizer."""
    args = make_arguments(model_size=opts.size, spec="local", attention_backend="sdpa", bf16=opts.bf16,
                          use_distributed_optimizer=opts.distributed_optimizer, **SETTINGS[name])
    model = build_model(args, build_model_config(plan_model(args)))
    optimizer = build_optimizer(args, model)
    generator = torch.Generator(device="cpu").manual_seed(0)
    for chunk in model:
        for param in chunk.parameters():
            param.main_grad.copy_(torch.randn(param.shape, generator=generator) * 1e-3)

    def step():
        optimizer_step(optimizer)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    for _ in range(opts.warmup):
        step()
    durations = []
    for _ in range(opts.steps):
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
    params = sum(p.numel() * p.element_size() for chunk in model for p in chunk.parameters())
    return statistics.median(durations), state_bytes(optimizer), params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="150m")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--distributed-optimizer", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=7)
    opts = parser.parse_args()
    initialize()
    results = {name: measure(name, opts) for name in SETTINGS}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device={device} size={opts.size} bf16={opts.bf16} distributed_optimizer={opts.distributed_optimizer} "
          f"torch {torch.__version__}, median of {opts.steps} steps after {opts.warmup}")
    print("| optimizer | step (s) | vs adam | state (GB) | state / parameters |\n|---|---|---|---|---|")
    base = results["adam"][0]
    for name, (seconds, state, params) in results.items():
        print(f"| {name} | {seconds:.3f} | {seconds / base:.2f}x | {state / 1e9:.2f} | {state / params:.2f} |")


if __name__ == "__main__":
    main()
