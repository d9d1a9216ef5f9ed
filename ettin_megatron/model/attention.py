"""Core attention for Ettin: one contract, several kernels.

Every backend computes the same thing for packed ("THD") inputs: queries, keys and values of shape
[t, heads, head_dim] holding several documents back to back, ``cu_seqlens`` marking where each
document starts, and a per-layer mask made of

* the document mask (a token attends only inside its own document: no compute on padding, no
  leakage between packed documents),
* the local window (``|i - j| <= w`` for the encoder, ``0 <= i - j <= w`` for the decoder, with
  ``w = local_attention_window // 2``) on local layers,
* causality for the decoder.

A regular [s, b] batch is the special case of b documents of length s. Backends:

``sdpa``   torch's scaled_dot_product_attention, document by document with an explicit mask; runs
           everywhere and is the reference the others are tested against.
``flex``   torch FlexAttention with a block mask (document + window + causal); GPU only (it has no
           backward on the CPU in torch 2.13).
``flash``  flash-attn's varlen kernel with ``window_size``; when flash-attn is installed (GPU).
``te``     Transformer Engine's DotProductAttention in THD format; when TE is installed (GPU).
``auto``   the first of te, flash, flex that can run here, else sdpa.

Megatron-Core's own ``DotProductAttention`` cannot serve here: it asserts ``packed_seq_params is None``
and replaces the mask of window layers with a *causal* sliding window.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule

from ..errors import ConfigError


@dataclass
class AttentionMask:
    """What a layer's attention may see (see the module docstring)."""

    cu_seqlens: torch.Tensor
    max_seqlen: int
    window: int | None
    causal: bool
    segment_lengths: tuple[int, ...] | None = None
    """The document lengths as numbers, when the batch brought them (see ``lengths``)."""

    def lengths(self) -> tuple[int, ...]:
        """The document lengths as numbers: the batch's own when it has them, as batches from the data
        loader do; reading them from the GPU would make the host wait for it, per layer and micro-batch."""
        if self.segment_lengths is not None:
            return self.segment_lengths
        return tuple((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist())


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends() -> list[str]:
    """The backends that can run on this machine, ``sdpa`` first."""
    backends = ["sdpa"]
    if torch.cuda.is_available():
        backends.append("flex")
        if _installed("flash_attn"):
            backends.append("flash")
        if _installed("transformer_engine"):
            backends.append("te")
    return backends


def resolve_backend(name: str) -> str:
    """Map ``auto`` to the best available backend; reject one that cannot run here."""
    available = available_backends()
    if name == "auto":
        return next(b for b in ("te", "flash", "flex", "sdpa") if b in available)
    if name not in available:
        raise ConfigError(
            f"attention backend {name!r} is not available on this machine (available: "
            f"{', '.join(available)}); use --attention-backend auto or sdpa."
        )
    return name


def visibility(length: int, mask: AttentionMask, device) -> torch.Tensor | None:
    """Boolean [length, length] matrix of allowed (query, key) pairs inside one document."""
    if mask.window is None and not mask.causal:
        return None
    pos = torch.arange(length, device=device)
    distance = pos[:, None] - pos[None, :]
    allowed = torch.ones(length, length, dtype=torch.bool, device=device)
    if mask.window is not None:
        allowed &= distance.abs() <= mask.window
    if mask.causal:
        allowed &= distance >= 0
    return allowed


def sdpa_attention(q, k, v, mask: AttentionMask, scale: float, dropout_p: float) -> torch.Tensor:
    """Reference backend: per document (equal-length documents in one batched call)."""
    lengths = mask.lengths()
    heads, dim = q.shape[1], q.shape[2]

    def attend(qd, kd, vd, length):  # [n, h, L, d]
        allowed = visibility(length, mask, q.device)
        return F.scaled_dot_product_attention(
            qd, kd, vd, attn_mask=allowed, dropout_p=dropout_p, scale=scale
        )

    if len(set(lengths)) == 1:
        n, length = len(lengths), lengths[0]
        batched = [x.view(n, length, heads, dim).transpose(1, 2) for x in (q, k, v)]
        return attend(*batched, length).transpose(1, 2).reshape(q.shape)
    outputs = []
    for qd, kd, vd in zip(*(torch.split(x, lengths) for x in (q, k, v))):
        out = attend(*(x.transpose(0, 1).unsqueeze(0) for x in (qd, kd, vd)), qd.shape[0])
        outputs.append(out.squeeze(0).transpose(0, 1))
    return torch.cat(outputs)


class _FlexBackend:
    """FlexAttention with a block mask, rebuilt only when the document layout changes."""

    def __init__(self):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self._create_block_mask = create_block_mask
        # Compiled on GPU (the fast path). The CPU gets eager flex, forward only: enough to test the
        # block mask, and inductor's CPU flex kernel does not compile in torch 2.13.
        self._attend = torch.compile(flex_attention, dynamic=True) if torch.cuda.is_available() else flex_attention
        self._cached = None

    def block_mask(self, mask: AttentionMask, total: int):
        key = mask.lengths()
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        cu = mask.cu_seqlens.to(torch.int64)
        doc = torch.bucketize(torch.arange(total, device=cu.device), cu[1:], right=True)
        window, causal = mask.window, mask.causal

        def mask_mod(b, h, q_idx, kv_idx):
            allowed = doc[q_idx] == doc[kv_idx]
            if window is not None:
                allowed = allowed & ((q_idx - kv_idx).abs() <= window)
            if causal:
                allowed = allowed & (kv_idx <= q_idx)
            return allowed

        block = self._create_block_mask(mask_mod, None, None, total, total, device=cu.device)
        self._cached = (key, block)
        return block

    def __call__(self, q, k, v, mask: AttentionMask, scale: float, dropout_p: float):
        if dropout_p:
            raise ConfigError("the flex backend has no attention-probability dropout; use sdpa.")
        block = self.block_mask(mask, q.shape[0])
        q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        out = self._attend(q4, k4, v4, block_mask=block, scale=scale)
        return out.squeeze(0).transpose(0, 1)


def _window_size(mask: AttentionMask) -> tuple[int, int]:
    """flash-attn / TE convention: (left, right) keys visible; -1 for unbounded."""
    if mask.window is None:
        return (-1, 0) if mask.causal else (-1, -1)
    return (mask.window, 0 if mask.causal else mask.window)


def flash_attention(q, k, v, mask: AttentionMask, scale: float, dropout_p: float) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    cu = mask.cu_seqlens.to(torch.int32)
    return flash_attn_varlen_func(
        q, k, v, cu, cu, mask.max_seqlen, mask.max_seqlen,
        dropout_p=dropout_p, softmax_scale=scale, causal=mask.causal,
        window_size=_window_size(mask),
    )


def _default_extra_state(module: torch.nn.Module) -> torch.nn.Module:
    """Let state dicts without the kernel's extra state (HF imports) load strictly, as Megatron's linear
    layers do for theirs: a missing ``_extra_state`` reads as None."""
    module._register_load_state_dict_pre_hook(
        lambda state_dict, prefix, *args, **kwargs: state_dict.setdefault(f"{prefix}_extra_state"))
    return module


class _Kernel(torch.nn.Module):
    """An attention function as the ``kernel`` submodule of ``EttinCoreAttention``.

    Its extra state is empty: it stands where TE's kernel keeps its FP8 metadata, so that a checkpoint
    has the same keys whatever backend wrote it and loads into any other (Megatron's local linear
    layers keep an empty extra state for TE's in the same way).
    """

    def __init__(self, attend):
        super().__init__()
        self.attend = attend
        _default_extra_state(self)

    def forward(self, q, k, v, mask: AttentionMask, scale: float, dropout_p: float):
        return self.attend(q, k, v, mask, scale, dropout_p)

    def get_extra_state(self):
        return None

    def set_extra_state(self, state) -> None:
        """A TE kernel's FP8 metadata means nothing to the other backends."""


def _te_kernel(heads: int, head_dim: int, dropout_p: float, window: int | None, causal: bool):
    """Transformer Engine's fused (cuDNN) attention in THD layout with a sliding window, with the
    kernels' call signature. It is TE's ``DotProductAttention`` itself, registered as the ``kernel``
    submodule, so ``.eval()``, ``.to()`` and the (dist) state dicts reach it and its FP8 metadata."""
    from transformer_engine.pytorch import DotProductAttention

    class TEKernel(DotProductAttention):
        def forward(self, q, k, v, mask: AttentionMask, scale: float, dropout_p: float):
            cu = mask.cu_seqlens.to(torch.int32)
            out = super().forward(
                q, k, v, cu_seqlens_q=cu, cu_seqlens_kv=cu,
                max_seqlen_q=mask.max_seqlen, max_seqlen_kv=mask.max_seqlen,
            )
            return out.view(q.shape)

    return _default_extra_state(TEKernel(
        num_attention_heads=heads,
        kv_channels=head_dim,
        attention_dropout=dropout_p,
        qkv_format="thd",
        attn_mask_type="padding_causal" if causal else "padding",
        window_size=_window_size(AttentionMask(torch.empty(0), 0, window, causal)),
    ))


class EttinCoreAttention(MegatronModule):
    """Megatron ``core_attention`` submodule: softmax(q k^T) v under Ettin's per-layer mask.

    Built by Megatron's ``SelfAttention`` with its usual arguments; reads the layer kind (global or
    local) from ``layer_number`` and the direction from ``config.attention``.
    """

    def __init__(self, config, layer_number: int, attn_mask_type=None, attention_type="self",
                 attention_dropout=None, softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            raise ConfigError("context parallelism is not supported by Ettin attention; set CP=1.")
        self.window = None if config.is_global_layer(layer_number - 1) else config.local_attention_window // 2
        self.causal = config.causal
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.backend_name = resolve_backend(config.attention_backend_name)
        if self.backend_name == "te":
            heads = config.num_attention_heads // config.tensor_model_parallel_size
            self.kernel = _te_kernel(heads, config.kv_channels, self.dropout_p, self.window, self.causal)
        elif self.backend_name == "flex":
            self.kernel = _Kernel(_FlexBackend())
        else:
            self.kernel = _Kernel(flash_attention if self.backend_name == "flash" else sdpa_attention)

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        """[s, b, h, d] -> [s, b, h*d], or packed [t, h, d] -> [t, h*d] with ``packed_seq_params``."""
        segment_lengths = None
        if packed_seq_params is not None:
            cu_seqlens, max_seqlen = packed_seq_params.cu_seqlens_q, packed_seq_params.max_seqlen_q
            segment_lengths = getattr(packed_seq_params, "segment_lengths", None)
            q, k, v = query, key, value
        else:
            s, b = query.shape[:2]
            cu_seqlens = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=query.device)
            max_seqlen = s
            q, k, v = (x.transpose(0, 1).reshape(b * s, *x.shape[2:]) for x in (query, key, value))
        mask = AttentionMask(cu_seqlens, int(max_seqlen), self.window, self.causal, segment_lengths)
        dropout_p = self.dropout_p if self.training else 0.0
        out = self.kernel(q.contiguous(), k.contiguous(), v.contiguous(), mask, self.scale, dropout_p)
        if packed_seq_params is not None:
            return out.reshape(out.shape[0], -1)
        return out.reshape(b, s, -1).transpose(0, 1).contiguous()
