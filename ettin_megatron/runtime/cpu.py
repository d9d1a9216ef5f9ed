"""Run Megatron-Core on a machine without CUDA.

Megatron-Core assumes a GPU in a few hundred places: ``torch.cuda.current_device()`` used as a device,
literal ``device="cuda"`` allocations (e.g. the optimizer's ``found_inf`` flag), ``.cuda()`` calls,
string type checks such as ``param.type() == "torch.cuda.FloatTensor"``, stream and event objects, and
the CUDA RNG tracker of ``tensor_parallel.random``. This module is the *only* place in ettin-megatron
that knows about that: :func:`enable_cpu_emulation` redirects those calls to the CPU so that the very
same Megatron-Core code paths (TP/SP layers, pipeline schedules, DDP, the distributed optimizer,
dist_checkpointing) run with gloo on a laptop or in CI.

It is inert when CUDA is available: nothing is patched on a GPU node.

Two mechanisms, each used where it is the simplest:

* a :class:`torch.overrides.TorchFunctionMode` that rewrites ``device=`` arguments naming CUDA, turns
  ``Tensor.cuda()`` into a no-op and makes ``Tensor.type()`` report the CUDA type name that the
  optimizers compare against;
* plain attribute patches on ``torch.cuda`` (device queries, synchronisation, RNG state, streams,
  events) and ``torch.nn.Module.cuda``.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_state = {"enabled": False, "mode": None}


def _is_cuda_device(device) -> bool:
    """True for anything torch would read as a CUDA device: "cuda", "cuda:1", a cuda device or an int."""
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class _CudaToCpuMode(TorchFunctionMode):
    """Redirects CUDA placement to the CPU for every torch call made while the mode is active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # Megatron's optimizers check ``param.type() == "torch.cuda.FloatTensor"``.
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = _CPU
        if func is torch.Tensor.to:  # tensor.to("cuda") / tensor.to(0): the device is positional
            args = (args[0], *(_CPU if _is_cuda_device(a) else a for a in args[1:]))
        return func(*args, **kwargs)


class _CpuEvent:
    """Stands in for ``torch.cuda.Event``: timing falls back to the caller's own wall clock."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def wait(self, *args, **kwargs):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


class _CpuStream:
    """Stands in for ``torch.cuda.Stream``; on the CPU every op runs in program order anyway."""

    def __init__(self, *args, **kwargs):
        pass

    @staticmethod
    def priority_range():  # megatron-core 0.19 asks (MoE overlap)
        return 0, 0

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return _CpuEvent()

    def synchronize(self):
        pass


class _QuietForkFilter(logging.Filter):
    """On the CPU the "CUDA" RNG *is* the CPU RNG, so the tracker's fork always changes it: not news."""

    def filter(self, record):
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    # A device rather than an index: it is mostly used as ``device=``, including in autograd
    # backward functions, which run outside the TorchFunctionMode.
    cuda.current_device = lambda: _CPU
    cuda.device_count = lambda: 1
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda: None
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.Event = _CpuEvent
    cuda.Stream = _CpuStream
    cuda.current_stream = lambda *a, **k: _CpuStream()
    cuda.default_stream = lambda *a, **k: _CpuStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(seed)
    torch.nn.Module.cuda = lambda self, *a, **k: self

    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    logging.getLogger(mcore_random.__name__).addFilter(_QuietForkFilter())


def enable_cpu_emulation() -> bool:
    """Make Megatron-Core's CUDA calls land on the CPU; a no-op on a machine with CUDA.

    Idempotent. Returns True when the emulation is active. Call it before building megatron-core
    objects (``ettin_megatron.runtime.initialize`` does).
    """
    if torch.cuda.is_available():
        return False
    if not _state["enabled"]:
        _patch_torch_cuda()
        mode = _CudaToCpuMode()
        mode.__enter__()
        _state.update(enabled=True, mode=mode)
    return True


def cpu_emulation_enabled() -> bool:
    """Whether :func:`enable_cpu_emulation` has patched this process."""
    return _state["enabled"]
