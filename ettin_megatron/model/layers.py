"""The small pieces the Ettin layer adds to Megatron-Core's TransformerLayer.

* ``EttinLayerNorm``: LayerNorm without a bias (ModernBERT), usable under sequence parallelism.
* ``EttinSelfAttention``: Megatron's SelfAttention, except that it picks the RoPE angles of its own
  attention kind (global or local theta) from the dict the model passes down, and rotates queries
  and keys by those per-token angles in one vectorised call, packed batches included.
* ``AttentionOutputDropoutAdd``: the residual add after attention with ModernBERT's attention-output
  dropout; the MLP's residual add has no dropout (``hidden_dropout`` is 0).
"""

from __future__ import annotations

import torch
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.transformer.attention import SelfAttention

from .rope import GLOBAL, LOCAL


class EttinLayerNorm(torch.nn.LayerNorm):
    """Bias-free LayerNorm built with Megatron's norm signature ``(config, hidden_size, eps)``.

    Under sequence parallelism each TP rank normalises its own slice of the sequence, so the weight's
    gradient is partial: the ``sequence_parallel`` attribute tells Megatron's
    ``finalize_model_grads`` to all-reduce it across the tensor-parallel group.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **unused):
        super().__init__(hidden_size, eps=eps, bias=False, dtype=config.params_dtype)
        self.weight.sequence_parallel = config.sequence_parallel


class EttinSelfAttention(SelfAttention):
    """Self-attention whose rotary angles depend on the layer kind (global vs local).

    The angles arrive per token, ``[s, b, 1, d]`` (``[t, 1, 1, d]`` for a packed batch), so rotating
    the projected queries and keys ``[s, b, heads, d]`` is one broadcast multiply for any batch.
    Megatron would instead send a packed batch through its THD RoPE, which slices the same table
    document by document with a ``cu_seqlens[i].item()`` each: a host-device sync per document, per
    layer, for queries and keys. So the rotation happens here, right after the QKV projection, and
    Megatron's own RoPE step is skipped (it receives no angles); the result is bit-identical.
    """

    _angles: torch.Tensor | None = None  # this forward's angles, for get_query_key_value_tensors

    def forward(self, hidden_states, attention_mask=None, rotary_pos_emb=None, **kwargs):
        if rotary_pos_emb is not None and rotary_pos_emb.dim() == 5:  # both kinds (rope.rotary_angles_by_kind)
            kind = GLOBAL if self.config.is_global_layer(self.layer_number - 1) else LOCAL
            rotary_pos_emb = rotary_pos_emb[kind]
        self._angles = rotary_pos_emb
        try:
            return super().forward(hidden_states, attention_mask, rotary_pos_emb=None, **kwargs)
        finally:
            self._angles = None

    def get_query_key_value_tensors(self, *args, **kwargs):
        query, key, *rest = super().get_query_key_value_tensors(*args, **kwargs)
        if self._angles is not None:
            query, key = (apply_rotary_pos_emb(x, self._angles, self.config, cp_group=self.pg_collection.cp)
                          for x in (query, key))
        return (query, key, *rest)


class AttentionOutputDropoutAdd:
    """``self_attn_bda`` with its own dropout probability (Megatron passes ``hidden_dropout``)."""

    def __init__(self, dropout: float):
        self.dropout = dropout

    def __call__(self, training: bool, fused: bool):
        bias_dropout_add = get_bias_dropout_add(training, fused)
        return lambda x_with_bias, residual, _prob: bias_dropout_add(x_with_bias, residual, self.dropout)
