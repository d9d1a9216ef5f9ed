"""Process groups, model-parallel state and seeding, from torchrun's environment.

``initialize`` is the one call a script makes before building a model: it reads RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT as torchrun sets them (a plain ``python script.py`` is a world
of one), picks NCCL on a GPU and gloo on the CPU, lets Megatron-Core derive the tensor, pipeline,
virtual-pipeline and data-parallel groups, and seeds every RNG the way Megatron-LM does.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel

from .cpu import enable_cpu_emulation


@dataclass(frozen=True)
class ParallelLayout:
    """How the world is cut. ``data_parallel`` is derived: world / (tensor x pipeline)."""

    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    virtual_pipeline_parallel: int | None = None

    def data_parallel(self, world_size: int) -> int:
        model_parallel = self.tensor_parallel * self.pipeline_parallel
        if world_size % model_parallel:
            raise ValueError(
                f"world size {world_size} is not divisible by tensor x pipeline parallel "
                f"({self.tensor_parallel} x {self.pipeline_parallel}); change TP/PP or the number "
                "of processes."
            )
        return world_size // model_parallel


def device() -> torch.device:
    """The device this rank computes on: its local GPU, or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now: a private rendezvous for a world made
    here, where a MASTER_PORT inherited from a job or a parent process may be taken."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_process_group(timeout_minutes: int) -> None:
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    torch.distributed.init_process_group(
        backend=backend,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(minutes=timeout_minutes),
    )


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and Megatron's tracker (distinct streams per TP rank).

    As Megatron-LM's ``_set_random_seed``, each pipeline stage adds 100 x its rank: with one seed the
    stages would initialize their layers identically and draw the same dropout masks. Needs the
    model-parallel groups (``initialize`` builds them first).
    """
    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def initialize(layout: ParallelLayout = ParallelLayout(), seed: int = 21, timeout_minutes: int = 30) -> int:
    """Create the process groups for ``layout`` and seed; returns the data-parallel size.

    Validates the layout against the world size before any group is built.
    """
    enable_cpu_emulation()
    _init_process_group(timeout_minutes)
    world_size = torch.distributed.get_world_size()
    dp = layout.data_parallel(world_size)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tensor_parallel,
        pipeline_model_parallel_size=layout.pipeline_parallel,
        virtual_pipeline_model_parallel_size=layout.virtual_pipeline_parallel,
    )
    seed_everything(seed)
    return dp


def is_writer() -> bool:
    """Whether this process writes the files all ranks share and prints what the job reports: global
    rank 0, or a lone process; before the process group exists, the process torchrun calls RANK 0. (The
    loop shares each step's loss and metrics with every rank, so rank 0 knows all it reports.)"""
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def report(message: str) -> None:
    """Print ``message`` once for the whole job (on the writer), at once."""
    if is_writer():
        print(message, flush=True)


def barrier() -> None:
    """Wait for every rank; nothing to wait for in a lone process."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def destroy() -> None:
    """Tear down the model-parallel state and the default process group."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
