"""Rotary position embeddings with one theta per attention kind.

ModernBERT gives its global and its local layers different RoPE bases (10k / 10k in Ettin phase 1,
160k / 160k or 160k / 10k after context extension), while Megatron-Core's ``RotaryEmbedding`` has one
base per model. The angles are cheap, so the model computes them per forward from the position ids
(which restart at 0 in every packed document) for each kind, and each attention layer picks its own.
The result has Megatron's layout, ``[s, b, 1, d]`` (``[t, 1, 1, d]`` for packed THD batches): one angle
row per token, which ``EttinSelfAttention`` applies with Megatron's ``apply_rotary_pos_emb`` (NeoX /
rotate-half style, over the full head dim) in its per-token (bshd) form, packed batches included.
"""

from __future__ import annotations

import torch

GLOBAL = 0
LOCAL = 1
"""Indices of the two kinds in ``rotary_angles_by_kind``'s stacked angles."""


def inverse_frequencies(theta: float, head_dim: int, device=None) -> torch.Tensor:
    """``1 / theta^(2i/d)`` for i < d/2, in float32 (as Hugging Face computes them)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponents)


def rotary_angles(position_ids: torch.Tensor, theta: float, head_dim: int) -> torch.Tensor:
    """RoPE angles for ``position_ids`` of shape [b, s]: a float32 tensor [s, b, 1, head_dim].

    The half-dimension angles are repeated (``cat(freqs, freqs)``) to match rotate-half RoPE.
    """
    inv_freq = inverse_frequencies(theta, head_dim, device=position_ids.device)
    freqs = position_ids.transpose(0, 1).float()[..., None] * inv_freq
    return torch.cat((freqs, freqs), dim=-1).unsqueeze(2)


def rotary_angles_by_kind(position_ids: torch.Tensor, config) -> torch.Tensor:
    """The angles of both attention kinds, stacked ``[2, s, b, 1, d]`` (``[GLOBAL]``, ``[LOCAL]``);
    computed once per forward and shared by all layers. One tensor rather than a dict: full activation
    recompute (Megatron's ``CheckpointFunction``) saves a layer group's inputs with
    ``save_for_backward``, which takes tensors only."""
    head_dim = config.kv_channels
    return torch.stack([rotary_angles(position_ids, theta, head_dim)
                        for theta in (config.global_rope_theta, config.local_rope_theta)])
