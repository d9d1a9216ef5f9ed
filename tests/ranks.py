"""Run a test body on N gloo ranks (CPU processes), the way torchrun would, and collect results.

``run_ranks(world_size, fn, *args)`` starts ``world_size`` spawned processes with torchrun's
environment variables, runs ``fn(rank, *args)`` in each after nothing else (``fn`` calls
``ettin_megatron.runtime.initialize`` with the layout it wants), and returns the per-rank return
values. A failure on any rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import os
import traceback

import torch.multiprocessing as mp

from ettin_megatron.runtime.distributed import free_port


def _entry(rank, world_size, port, fn, args, queue):
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )
    try:
        result = fn(rank, *args)
        queue.put((rank, True, result))
    except BaseException:  # report everything, including assertion errors, to the parent
        queue.put((rank, False, traceback.format_exc()))
        raise
    finally:
        from ettin_megatron.runtime import destroy

        destroy()


def run_ranks(world_size: int, fn, *args, timeout: float = 300.0) -> list:
    """Run ``fn(rank, *args)`` on ``world_size`` gloo ranks; return the results ordered by rank."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(rank, world_size, port, fn, args, queue), daemon=False)
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    results, errors = {}, []
    for _ in range(world_size):
        try:
            rank, ok, payload = queue.get(timeout=timeout)
        except Exception:  # queue.Empty: a rank died without reporting, or hung
            errors.append(f"no report from some rank within {timeout:.0f} s")
            break
        if ok:
            results[rank] = payload
        else:
            errors.append(f"rank {rank} failed:\n{payload}")
            break
    for p in procs:
        p.join(timeout=5 if errors else timeout)
        if p.is_alive():
            p.kill()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world_size)]
