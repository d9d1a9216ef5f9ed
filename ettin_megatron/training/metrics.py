"""What a run reports: one line per logged step, validation lines, scalars for TensorBoard and W&B.

    step     20/200 | loss 6.8123 | lr 3.000e-03 | grad norm 1.234 | tokens 81,920 | tokens/s 51,234 | MFU 41.2%
        | peak mem 41.20 GB | ETA 0:03:10         (one line)
    validation step 200 | mlm loss 5.9012 | accuracy 0.1875 | tokens 12,345

MFU is shown on GPUs whose peak BF16 dense throughput is known; the training FLOPs are the model's
(model/counts.py).
``tokens`` is the input tokens consumed so far (out of --train-tokens in a token-budget run).
Peak memory is the job's highest, over ranks: CUDA's max allocated on GPUs, max RSS on the CPU.
Lines are printed and scalars written by rank 0 (runtime.is_writer, the one rule of who prints); the
same scalars go to every writer (``--tensorboard-dir``, ``--wandb-project``).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import resource
import time

import torch

from ..model.counts import training_flops
from ..runtime import is_writer
from .plan import wandb_save_dir

# Peak dense BF16 tensor-core FLOP/s per device name fragment.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def peak_memory_gb() -> float:
    """This job's peak memory so far, the highest over ranks (a collective): CUDA max allocated, else
    the process's max resident set size."""
    if torch.cuda.is_available():
        peak = torch.tensor(float(torch.cuda.max_memory_allocated()), device="cuda")
    else:
        peak = torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0)  # KiB on Linux
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    return peak.item() / 1e9


class TensorBoardWriter:
    """Scalars as TensorBoard event files (torch.utils.tensorboard)."""

    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir)

    def write(self, step: int, values: dict) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    """Scalars as a Weights & Biases run (Megatron-LM's --wandb-project / --wandb-exp-name /
    --wandb-save-dir); WANDB_MODE=offline keeps it on disk for ``wandb sync``."""

    def __init__(self, project: str, name: str | None, save_dir: str, config: dict):
        import wandb

        os.makedirs(save_dir, exist_ok=True)
        self.run = wandb.init(project=project, name=name, dir=save_dir, config=config)

    def write(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def scalar_writers(args) -> list:
    """The writers ``args`` ask for, on the logging rank (none elsewhere)."""
    r = args.run
    if not is_writer():
        return []
    writers = []
    if r.tensorboard_dir:
        try:
            writers.append(TensorBoardWriter(r.tensorboard_dir))
        except ImportError:
            print("note: the tensorboard package is not installed; metrics go to the log only.", flush=True)
    if r.wandb_project:
        config = {k: v for group in dataclasses.asdict(args).values() for k, v in group.items()}
        writers.append(WandbWriter(r.wandb_project, r.wandb_exp_name, wandb_save_dir(args), config))
    return writers


class Metrics:
    """Formats and writes step and validation metrics; keeps the timing needed for tokens/s and ETA."""

    def __init__(self, writers: list, total_steps: int | None, total_samples: int | None,
                 total_tokens: int | None, config, num_params: int, world_size: int, objective: str):
        self.total_steps, self.total_tokens = total_steps, total_tokens
        # The run's length: (index into (step, samples, tokens), its end); ETA counts in that unit.
        self.length = next((unit, total) for unit, total in enumerate((total_steps, total_samples, total_tokens))
                           if total is not None)
        self.start_point = None  # ((step, samples, tokens), time) of the first logged step
        self.config, self.num_params = config, num_params
        self.world_size = world_size
        self.objective = objective
        self.peak = peak_flops()
        self.writers = writers
        self.window_start = time.time()
        self.window_tokens = 0
        self.window_flops = 0.0

    def add_tokens(self, tokens: int, pairs: float) -> None:
        """Tokens processed by the whole job (all DP ranks) in the step just done, and the (query, key)
        pairs their attention scored over all layers."""
        self.window_tokens += tokens
        self.window_flops += training_flops(self.config, self.num_params, tokens, pairs)

    def log_step(self, step: int, consumed_samples: int, consumed_tokens: int, loss: float, lr: float,
                 grad_norm: float | None, batch_size: int, clipped: float | None = None) -> dict:
        """Print (on the logging rank) and return the step's metrics; resets the tokens/s window.
        ``clipped``: StableAdamW's share of tensors whose update was clipped (what its users watch in place
        of a clipped gradient norm)."""
        now = time.time()
        elapsed = max(now - self.window_start, 1e-9)
        tokens_per_s = self.window_tokens / elapsed
        row = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
               "batch_size": batch_size, "tokens": consumed_tokens, "clipped": clipped}
        parts = [f"step {step:>7}" + (f"/{self.total_steps}" if self.total_steps else ""),
                 f"loss {loss:.4f}", f"lr {lr:.3e}"]
        if grad_norm is not None:
            parts.append(f"grad norm {grad_norm:.3f}")
        if clipped is not None:
            parts.append(f"clipped {100 * clipped:.1f}%")
        parts.append(f"tokens {consumed_tokens:,}" + (f"/{self.total_tokens:,}" if self.total_tokens else ""))
        parts.append(f"tokens/s {tokens_per_s:,.0f}")
        if self.peak:
            row["mfu"] = self.window_flops / elapsed / (self.peak * self.world_size)
            parts.append(f"MFU {100 * row['mfu']:.1f}%")
        row["peak_memory_gb"] = peak_memory_gb()
        parts.append(f"peak mem {row['peak_memory_gb']:.2f} GB")
        position = (step, consumed_samples, consumed_tokens)
        if self.start_point is None:
            self.start_point = (position, now)
        (first, first_time), (unit, total) = self.start_point, self.length
        if step > first[0]:  # in the run's unit: steps, samples or tokens (ramp-up aware)
            done, left = position[unit] - first[unit], total - position[unit]
            eta = datetime.timedelta(seconds=round((now - first_time) / done * max(left, 0)))
            parts.append(f"ETA {eta}")
        if is_writer():
            print(" | ".join(parts), flush=True)
            self._scalars(step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                                 "train/clipped_updates": clipped,
                                 "train/tokens_per_s": tokens_per_s, "train/batch_size": batch_size,
                                 "train/peak_memory_gb": row["peak_memory_gb"]})
        self.window_start, self.window_tokens, self.window_flops = now, 0, 0.0
        return row

    def log_validation(self, step: int, loss: float, accuracy: float, tokens: int) -> dict:
        """MLM: loss and accuracy of the masked tokens; CLM: loss and perplexity."""
        name = "clm" if self.objective == "clm" else "mlm"
        row = {"step": step, "val_loss": loss, "val_accuracy": accuracy}
        parts = [f"validation step {step}", f"{name} loss {loss:.4f}"]
        if name == "clm":
            row["val_perplexity"] = math.exp(min(loss, 50.0))
            parts.append(f"perplexity {row['val_perplexity']:.2f}")
        else:
            parts.append(f"accuracy {accuracy:.4f}")
        parts.append(f"tokens {tokens:,}")
        if is_writer():
            print(" | ".join(parts), flush=True)
            self._scalars(step, {f"valid/{k[4:]}": v for k, v in row.items() if k.startswith("val_")})
        return row

    def _scalars(self, step: int, values: dict) -> None:
        values = {key: value for key, value in values.items() if value is not None}
        for writer in self.writers:
            writer.write(step, values)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
