"""Why a run stops before its last step: a non-finite loss or gradient (an error: nothing more is saved)
or a signal / the time limit (a clean exit: the step is finished, saved, and a relaunch resumes).

Every rank must take the same decision at the same step, or the others would wait forever in the next
collective. So each decision is one all-reduce of this rank's flags over the whole world, as
Megatron-LM's DistributedSignalHandler gathers the ranks' signal flags.

Megatron-LM checks the loss and the gradients for NaN and Inf by default
(``--no-check-for-nan-in-loss-and-grad`` turns it off). Megatron-Core's DDP check
(``check_for_nan_in_grad``) raises on the rank that sees a bad local gradient only, before the
gradient reduce, where the other ranks then wait; here the check runs after the reduce, on the global
loss and every rank's reduced gradient buffers, before the optimizer step, and all ranks stop together.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import torch
from megatron.core.datasets.blended_dataset import BlendedDataset

from ..errors import NonFiniteError
from ..runtime import device
from .forward_step import micro_batch_losses


def _all_reduce(values: list[float], op) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device())
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=op)
    return tensor.tolist()


def sample_source(dataset, index: int) -> str:
    """Where sample ``index`` of a training split comes from: its dataset prefix and index there."""
    index %= len(dataset)
    if isinstance(dataset, BlendedDataset):
        dataset, index = dataset.datasets[dataset.dataset_index[index]], dataset.dataset_sample_index[index]
    return f"{dataset.dataset_path} sample {int(index)}"


def nonfinite_flags(run, consumed: int, reports: list) -> torch.Tensor:
    """[any rank's reduced gradients are not finite, minus the first sample of the first micro-batch whose
    loss is not finite (-inf if none)], the same on every rank: one all-reduce over the world, on the
    device (train_step reads it with the step's reports, so the guard adds no host sync)."""
    bad_grads = torch.zeros((), dtype=torch.float64, device=device())
    for chunk in run.model:
        for buffer in chunk.buffers:
            bad_grads = torch.maximum(bad_grads, (~torch.isfinite(buffer.grad_data)).any().double())
    first_bad = torch.tensor(float("inf"), dtype=torch.float64, device=device())
    if reports:
        micro, dp = run.args.data.micro_batch_size, run.dp_size
        starts = torch.tensor([consumed + (k * dp + run.dp_rank) * micro for k in range(len(reports))],
                              dtype=torch.float64, device=device())
        bad = ~torch.isfinite(micro_batch_losses(reports))
        first_bad = torch.where(bad, starts, first_bad).min()
    flags = torch.stack([bad_grads, -first_bad])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return flags


def check_finite(run, step: int, consumed: int, loss: float, bad_grads: float, neg_first_bad: float) -> None:
    """Raise NonFiniteError (on every rank alike) when the global ``loss`` or any rank's reduced gradients
    are not finite (``nonfinite_flags``, read on the host); the message names the first bad micro-batch's
    samples when a loss shows it."""
    if math.isfinite(loss) and not bad_grads:
        return
    what = f"loss {loss}" if not math.isfinite(loss) else "gradients"
    where = f"step {step}, {consumed:,} samples consumed before it"
    if math.isfinite(neg_first_bad):
        first = int(-neg_first_bad)
        micro = run.args.data.micro_batch_size
        where += (f"; first bad micro-batch: training samples {first}-{first + micro - 1} "
                  f"(the first is {sample_source(run.train_ds, first)})")
    raise NonFiniteError(f"non-finite {what} at {where}; stopped before the optimizer step, nothing saved "
                         "(lower --lr or check those samples; --no-check-for-nan-in-loss-and-grad skips this check).")


class ExitConditions:
    """--exit-signal-handler and --exit-duration-in-mins: ``reason()`` after each step says, the same on
    every rank, whether to save and stop now (and why), or None to go on.

    The handler catches SIGTERM (what SLURM sends at the time limit and on preemption, and what
    torchrun forwards), SIGINT (Ctrl-C, which torchrun forwards too) and --exit-signal (e.g. SIGUSR1 from
    ``sbatch --signal=USR1@600``); a signal only sets a flag, so the step in flight finishes. The data
    loader's workers ignore these signals (data_loader.STOP_REQUESTS), so that they outlive the save.
    """

    def __init__(self, run_args, start_time: float):
        self.deadline = (start_time + 60 * run_args.exit_duration_in_mins
                         if run_args.exit_duration_in_mins else None)
        self.signals = ({signal.SIGTERM, signal.SIGINT, signal.Signals[run_args.exit_signal]}
                        if run_args.exit_signal_handler else set())
        self.received = None
        self.pid = os.getpid()
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.signals}

    def _handle(self, signum, frame) -> None:
        # Forked DataLoader workers inherit this handler for an --exit-signal outside STOP_REQUESTS: a
        # worker that receives it does nothing, and the training process ends its workers when it stops.
        if os.getpid() == self.pid:
            self.received = self.received or signum

    def reason(self) -> str | None:
        if not self.signals and self.deadline is None:
            return None
        timed_out = self.deadline is not None and time.time() >= self.deadline
        received, timed_out = _all_reduce([float(self.received or 0), float(timed_out)],
                                          torch.distributed.ReduceOp.MAX)  # the signal's number: any rank's
        if received:
            return f"{signal.Signals(int(received)).name} received"
        if timed_out:
            return "--exit-duration-in-mins reached"
        return None

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def stop_with_launcher(interval: float = 2.0) -> None:
    """End this rank when whoever launched it is gone: a launcher killed with SIGKILL forwards no signal,
    and its ranks would train on, orphaned, for hours. Watched: the torchrun agent (this process's
    parent, when torchrun started it) and the bash launcher above it (ETTIN_LAUNCHER_PID, which
    examples/pretrain_ettin_common.sh exports). When one is gone a daemon thread sends this rank SIGTERM:
    with --exit-signal-handler it saves the step and exits, otherwise it ends at once. A process started
    by hand (say under nohup) is never watched, and neither is anything where /proc does not exist."""
    watched = ([os.getppid()] if "TORCHELASTIC_RUN_ID" in os.environ else []) + \
        [int(pid) for pid in [os.environ.get("ETTIN_LAUNCHER_PID")] if pid]
    if not watched or not os.path.isdir("/proc/self"):
        return

    def watch() -> None:
        while all(map(_running, watched)):
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs: a zombie (exited, not yet reaped by its parent) does not."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
