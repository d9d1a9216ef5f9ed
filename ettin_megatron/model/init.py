"""Initial weights that depend on the seed and the model only, not on the parallel layout.

Megatron draws each rank's weights from that rank's RNG stream, in construction order, from a seed
that differs per pipeline stage (seed + 100 x stage, so that stages do not draw alike). The same
``--seed`` therefore gives another model at PP=2 than at PP=1, and on a GPU (where each rank draws
only its shard) at TP=2 than at TP=1: a run cannot be reproduced on another layout.

``initialize_weights`` redraws every parameter from a generator of its own, seeded by the run's seed
and the parameter's checkpoint key. That key is layout-independent already (the dist-checkpoint name:
global layer numbers; the tied output weight of a last pipeline stage carries the embedding's key), and
Megatron's sharded state dict says where this rank's shard sits in the full tensor (global shape and
offset, GLU halves included). So each rank draws the full tensor, as ``_initialize_affine_weight_cpu``
does, and keeps its slice: the weights are bit-identical at any TP / PP / VPP / DP, on CPU or GPU.

The statistics are the Ettin recipe's (``EttinConfig``): truncated normals (2 sigma) of std 0.02, the
output projections (attention out, MLP fc2, head dense) at 0.02 / sqrt(2 x layers), norms 1, biases 0.
Cost: one full tensor at a time on the CPU (the 1B model's embedding, 50368 x 1792 in float32, is
the largest: 361 MB), and every rank draws the full tensors of its stage, TP x its share.
"""

from __future__ import annotations

import hashlib

import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

OUTPUT_PROJECTIONS = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight", "head.dense.weight")
"""Weights drawn with ``config.output_layer_init_method`` (scaled by depth), as the model builds them."""


def key_seed(seed: int, key: str) -> int:
    """A 63-bit generator seed from the run's seed and a checkpoint key (stable across processes)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _shards(model) -> list[ShardedTensor]:
    """This rank's weight shards, GLU halves built from their factories."""
    shards = []
    for entry in model.sharded_state_dict().values():
        if isinstance(entry, ShardedTensorFactory):
            shards.extend(t for t in nested_values(entry.build()) if isinstance(t, ShardedTensor))
        elif isinstance(entry, ShardedTensor):
            shards.append(entry)
    return shards


def full_initial_tensor(key: str, shape: tuple, seed: int, config) -> torch.Tensor:
    """The whole (unsharded) initial value of the parameter ``key``, in float32 on the CPU."""
    if key.endswith("bias"):
        return torch.zeros(shape)
    if len(shape) == 1:  # LayerNorm weights
        return torch.ones(shape)
    init = config.output_layer_init_method if key.endswith(OUTPUT_PROJECTIONS) else config.init_method
    return init(torch.empty(shape), generator=torch.Generator().manual_seed(key_seed(seed, key)))


@torch.no_grad()
def initialize_weights(model, seed: int) -> None:
    """Overwrite ``model``'s (an EttinModel, one pipeline chunk) parameters with the layout-independent
    initial weights of ``seed``."""
    for shard in _shards(model):
        assert shard.flattened_range is None and shard.prepend_axis_num == 0, shard.key
        full = full_initial_tensor(shard.key, shard.global_shape, seed, model.config)
        index = tuple(slice(o, o + n) for o, n in zip(shard.global_offset, shard.data.shape))
        shard.data.copy_(full[index])
