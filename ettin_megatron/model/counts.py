"""What the model costs: its parameters and the FLOPs of training it on a packed batch.

Training FLOPs follow the usual estimate: 6 x parameters (the tied vocabulary projection included) per
input token, plus 12 x hidden per (query, key) pair that attention scores, summed over the layers. The
pairs are counted from each micro-batch's packed documents (``cu_seqlens``): attention never crosses a
document, so a global layer scores L x L pairs per document of length L (about half when causal), not
seq_length x seq_length, and a local layer only the pairs within its window.
"""

from __future__ import annotations

import torch


def count_parameters(config) -> int:
    """Parameters of the whole model (tied embedding once), whatever the parallel layout."""
    h, f, v, n = config.hidden_size, config.ffn_hidden_size, config.vocab_size, config.num_layers
    embedding = v * h + h                          # token embedding + its norm
    layers = n * (4 * h * h + 3 * h * f + 2 * h) - h   # QKV + out, GeGLU fc1 (2f) + fc2, 2 norms (layer 0: 1)
    head = h + h * h + h + v                        # final norm, dense + norm, vocab bias (weight tied)
    return embedding + layers + head


def attention_pairs(cu_seqlens: torch.Tensor, window: int | None, causal: bool) -> torch.Tensor:
    """The (query, key) pairs one attention layer scores over the packed documents ``cu_seqlens``
    bounds: per document of length L, the pairs at distance d <= m = min(L - 1, window) on one side
    (keys before the query, the query itself included) and, unless ``causal``, as many on the other.
    A device tensor computed on the device: no host sync."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    reach = lengths - 1 if window is None else (lengths - 1).clamp(max=window)
    one_side = reach * lengths - reach * (reach + 1) // 2  # sum over d = 1..m of (L - d)
    return (lengths + (1 if causal else 2) * one_side).sum()


def attended_pairs(cu_seqlens: torch.Tensor, config) -> torch.Tensor:
    """The (query, key) pairs the whole model scores on one micro-batch: its global and local layers'."""
    global_layers = sum(config.is_global_layer(i) for i in range(config.num_layers))
    local_layers = config.num_layers - global_layers
    return (global_layers * attention_pairs(cu_seqlens, None, config.causal)
            + local_layers * attention_pairs(cu_seqlens, config.local_attention_window // 2, config.causal))


def training_flops(config, num_params: int, tokens: float, pairs: float) -> float:
    """Training FLOPs (forward + backward) of ``tokens`` input tokens whose attention scored ``pairs``
    (query, key) pairs over all layers: 2 matmuls (q k^T, p v) of 2 x hidden FLOPs per pair, x 3."""
    return 6.0 * num_params * tokens + 12.0 * config.hidden_size * pairs
