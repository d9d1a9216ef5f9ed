"""Where the model runs: process groups, devices, seeding, and the CPU emulation of CUDA."""

from .cpu import cpu_emulation_enabled, enable_cpu_emulation
from .distributed import (
    ParallelLayout,
    barrier,
    destroy,
    device,
    initialize,
    is_writer,
    report,
    seed_everything,
)

__all__ = [
    "ParallelLayout",
    "barrier",
    "cpu_emulation_enabled",
    "destroy",
    "device",
    "enable_cpu_emulation",
    "initialize",
    "is_writer",
    "report",
    "seed_everything",
]
