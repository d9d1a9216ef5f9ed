"""The ModernBERT prediction head: dense -> GELU -> LayerNorm, before the tied vocabulary projection.

The same head serves MLM and CLM. The dense layer is replicated across tensor-parallel ranks (it is
hidden x hidden, small next to the vocabulary projection); under sequence parallelism each rank sees
its slice of the sequence, so its gradients are marked for the tensor-parallel all-reduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import EttinLayerNorm


class EttinLMHead(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = torch.nn.Linear(config.hidden_size, config.hidden_size, bias=False, dtype=config.params_dtype)
        if config.perform_initialization:
            config.output_layer_init_method(self.dense.weight)
        self.dense.weight.sequence_parallel = config.sequence_parallel
        self.norm = EttinLayerNorm(config, config.hidden_size, eps=config.layernorm_epsilon)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(hidden_states)))
