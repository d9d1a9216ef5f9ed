"""Training state in checkpoints, on top of ``ettin_megatron.checkpoint`` (one on-disk layout).

A training checkpoint is the model checkpoint plus these entries of ``extra``:

    optimizer            megatron's optimizer.sharded_state_dict (reshardable: any TP / PP / DP)
    opt_param_scheduler  the LR scheduler's state (a plain object)
    training_state       {"iteration", "consumed_samples", "layout": [TP, PP, DP]} (plain object)
    rng_state            per-rank RNG states (python, numpy, torch, the TP tracker), one ShardedObject
                         per (PP, TP, DP) rank; restored only at the same layout, where it makes a
                         resumed run bit-exact. At another layout the run resumes without it.

``--finetune`` loads the weights only: a fresh optimizer, schedule and data position.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from ..checkpoint import (
    load_checkpoint,
    model_sharded_state_dict,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from .setup import unwrap


def _layout() -> list[int]:
    return [parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_data_parallel_world_size()]


def _rng_sharded_object(state) -> ShardedObject:
    tp, pp, dp = _layout()
    rank = (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank(),
            parallel_state.get_data_parallel_rank())
    return ShardedObject("rng_state", state, (pp, tp, dp), rank, replica_id=0)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def save(root, iteration: int, consumed_samples: int, model_chunks, optimizer, scheduler, config,
         tokenizer: str | None = None):
    """Save model + optimizer + scheduler + RNG + data position as iteration ``iteration`` (collective)."""
    chunks = unwrap(model_chunks)
    extra = {
        "optimizer": optimizer.sharded_state_dict(model_sharded_state_dict(chunks)),
        "opt_param_scheduler": scheduler.state_dict(),
        "training_state": {"iteration": iteration, "consumed_samples": consumed_samples, "layout": _layout()},
        "rng_state": _rng_sharded_object(rng_state()),
    }
    return save_checkpoint(root, iteration, chunks, config, extra=extra, tokenizer=tokenizer)


def has_checkpoint(path) -> bool:
    """Whether ``path`` is a checkpoint root with a latest marker, or an iteration directory."""
    try:
        resolve_checkpoint_dir(path)
        return True
    except Exception:
        return False


def load(path, model_chunks, optimizer, scheduler, finetune: bool = False) -> tuple[int, int]:
    """Restore a checkpoint; returns (iteration, consumed_samples) to continue from ((0, 0) with finetune)."""
    chunks = unwrap(model_chunks)
    directory = resolve_checkpoint_dir(path)
    if finetune:
        load_checkpoint(directory, chunks)
        return 0, 0
    common = dist_checkpointing.load_common_state_dict(str(directory))
    if "training_state" not in common:
        raise ValueError(f"{directory} holds weights only (no training state); resume it with --finetune.")
    same_layout = common["training_state"]["layout"] == _layout()
    extra = {"optimizer": optimizer.sharded_state_dict(model_sharded_state_dict(chunks), is_loading=True)}
    if same_layout:
        extra["rng_state"] = _rng_sharded_object(rng_state())
    loaded = load_checkpoint(directory, chunks, extra=extra)
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(common["opt_param_scheduler"])
    if same_layout:
        set_rng_state(loaded["rng_state"])
    state = common["training_state"]
    return state["iteration"], state["consumed_samples"]


__all__ = ["has_checkpoint", "load", "save"]
