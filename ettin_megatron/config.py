"""The Ettin model configuration: size presets that produce a Megatron-Core ``TransformerConfig``.

``EttinConfig`` *is* a ``TransformerConfig`` (Megatron's modules read it directly) with the fields
that ModernBERT adds: the attention (bidirectional for an encoder, causal for a decoder), the
alternating global / local attention pattern, a RoPE theta per attention kind, the vocabulary and the
position limit. ``ettin_config("150m", attention="bidirectional", tensor_model_parallel_size=2)`` is the
usual way in.

The attention is the model's; the training objective (mlm, clm, mntp: training/arguments.py,
data/objectives.py) is the run's. ``attention_of`` says which attention an objective trains.

Every combination a user can get wrong (unknown size or attention, heads not divisible by TP, layers
not divisible by PP x VPP, a sequence longer than the position limit) fails in ``__post_init__`` with
one line that says what to change, before any module is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from .errors import ConfigError
from .mcore_compat import no_cuda_graph_modules
from .vocab import MODERNBERT_IDS

ATTENTIONS = ("bidirectional", "causal")
ATTENTION_BACKENDS = ("auto", "sdpa", "flex", "te", "flash")

_ATTENTION_OF_OBJECTIVE = {"mlm": "bidirectional", "mntp": "bidirectional", "clm": "causal"}


def attention_of(objective: str) -> str:
    """The attention a training objective trains: MLM and MNTP predict a token from both sides (MNTP
    turns a decoder into an encoder), CLM from the tokens before it."""
    if objective not in _ATTENTION_OF_OBJECTIVE:
        raise ConfigError(f"unknown training objective {objective!r}; use one of {', '.join(_ATTENTION_OF_OBJECTIVE)}.")
    return _ATTENTION_OF_OBJECTIVE[objective]


@dataclass(frozen=True)
class SizePreset:
    """The shapes that define an Ettin size (head dim is always 64 except for ``tiny``)."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int


# The six Ettin sizes (arXiv 2507.11412, Table 1 / the released configs), plus ``tiny`` for tests
# and the CPU demo. ffn_hidden_size is the GeGLU intermediate size (fc1 maps to twice it).
PRESETS: dict[str, SizePreset] = {
    "tiny": SizePreset(num_layers=4, hidden_size=128, ffn_hidden_size=192, num_attention_heads=2),
    "17m": SizePreset(num_layers=7, hidden_size=256, ffn_hidden_size=384, num_attention_heads=4),
    "32m": SizePreset(num_layers=10, hidden_size=384, ffn_hidden_size=576, num_attention_heads=6),
    "68m": SizePreset(num_layers=19, hidden_size=512, ffn_hidden_size=768, num_attention_heads=8),
    "150m": SizePreset(num_layers=22, hidden_size=768, ffn_hidden_size=1152, num_attention_heads=12),
    "400m": SizePreset(num_layers=28, hidden_size=1024, ffn_hidden_size=2624, num_attention_heads=16),
    "1b": SizePreset(num_layers=28, hidden_size=1792, ffn_hidden_size=3840, num_attention_heads=28),
}


def truncated_normal_init(std: float, cutoff: float):
    """ModernBERT's initializer: a normal of ``std`` truncated at ``cutoff`` standard deviations."""
    return partial(torch.nn.init.trunc_normal_, mean=0.0, std=std, a=-cutoff * std, b=cutoff * std)


@dataclass
class EttinConfig(TransformerConfig):
    """Megatron's TransformerConfig plus the ModernBERT / Ettin fields. Defaults are Ettin phase 1's model;
    dropout defaults to 0 (inference, conversion, parity tests) and training sets Ettin's 0.1."""

    attention: str = "bidirectional"
    """``bidirectional`` (the encoder) or ``causal`` (the decoder): the only difference between an Ettin
    encoder and its decoder twin."""

    vocab_size: int = MODERNBERT_IDS.padded_vocab_size
    """ModernBERT's tokenizer: 50280 BPE tokens + specials, padded to a multiple of 64."""

    max_position_embeddings: int = 8192
    """Longest sequence (per document) the model accepts; RoPE has no table, this is the contract
    written to Hugging Face's config (ModernBERT: 8192)."""

    global_attn_every_n_layers: int = 3
    """Layer i attends globally when i % n == 0, locally otherwise."""

    local_attention_window: int = 128
    """Tokens a local layer sees: |i - j| <= window // 2 (encoder), j in [i - window // 2, i] (decoder)."""

    global_rope_theta: float = 10_000.0
    """RoPE base of the global layers (10k in phase 1, 160k from phase 2 on)."""

    local_rope_theta: float = 10_000.0
    """RoPE base of the local layers."""

    attention_output_dropout: float = 0.0
    """Dropout on the attention block's output (0.1 in Ettin pretraining); the MLP has none."""

    attention_backend_name: str = "auto"
    """Core attention implementation: auto | sdpa | flex | te | flash (see model/attention.py)."""

    init_cutoff_factor: float = 2.0
    """Weights are drawn from a normal truncated at this many standard deviations."""

    def __post_init__(self):
        self._validate()
        std = self.init_method_std
        self.init_method = truncated_normal_init(std, self.init_cutoff_factor)
        self.output_layer_init_method = truncated_normal_init(
            std / math.sqrt(2.0 * self.num_layers), self.init_cutoff_factor
        )
        super().__post_init__()

    def _validate(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"unknown attention {self.attention!r}; use one of {', '.join(ATTENTIONS)}.")
        if self.attention_backend_name not in ATTENTION_BACKENDS:
            raise ConfigError(
                f"unknown attention backend {self.attention_backend_name!r}; "
                f"use one of {', '.join(ATTENTION_BACKENDS)}."
            )
        tp = self.tensor_model_parallel_size
        if self.num_attention_heads % tp:
            raise ConfigError(
                f"{self.num_attention_heads} attention heads are not divisible by tensor parallel size "
                f"{tp}; pick a TP that divides {self.num_attention_heads}."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden size {self.hidden_size} is not divisible by {self.num_attention_heads} attention heads; "
                "pick a head count that divides it."
            )
        stages = self.pipeline_model_parallel_size * (self.virtual_pipeline_model_parallel_size or 1)
        if self.num_layers % stages:
            raise ConfigError(
                f"{self.num_layers} layers cannot be split evenly into PP x VPP = {stages} pipeline "
                "stages; pick PP and VPP whose product divides the layer count."
            )
        if self.global_attn_every_n_layers < 1 or self.local_attention_window < 2:
            raise ConfigError("global_attn_every_n_layers must be >= 1 and local_attention_window >= 2.")
        if self.vocab_size % tp:
            raise ConfigError(f"vocab size {self.vocab_size} is not divisible by tensor parallel size {tp}.")

    @property
    def causal(self) -> bool:
        return self.attention == "causal"

    def is_global_layer(self, layer_index: int) -> bool:
        """Whether 0-based layer ``layer_index`` uses global attention (ModernBERT: every third)."""
        return layer_index % self.global_attn_every_n_layers == 0

    def check_sequence_length(self, seq_length: int) -> None:
        """Raise a one-line ConfigError when a sequence would exceed the position limit."""
        if seq_length > self.max_position_embeddings:
            raise ConfigError(
                f"sequence length {seq_length} exceeds the model's position limit "
                f"{self.max_position_embeddings}; shorten --seq-length or raise max_position_embeddings."
            )


# Megatron-Core knobs that are the same for every Ettin model. Fused kernels are left to the TE spec;
# the local spec computes in plain torch so it runs anywhere.
_ETTIN_FIXED = dict(
    kv_channels=None,
    add_bias_linear=False,
    add_qkv_bias=False,
    gated_linear_unit=True,
    activation_func=F.gelu,
    normalization="LayerNorm",
    layernorm_epsilon=1e-5,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    init_method_std=0.02,
    apply_rope_fusion=False,
    bias_activation_fusion=False,
    bias_dropout_fusion=False,
    masked_softmax_fusion=False,
    gradient_accumulation_fusion=False,
    persist_layer_norm=False,
    variable_seq_lengths=True,
    moe_token_dispatcher_type="alltoall",  # megatron rejects variable_seq_lengths with the default
    **no_cuda_graph_modules(),  # what megatron's default "full" turns into, minus a warning per config
    # Layer 0 has no attention norm, so layers are not stackable: checkpoint them one key per layer.
    hetereogenous_dist_checkpoint=True,
)


def ettin_config(size: str | None = "tiny", **overrides) -> EttinConfig:
    """Build the EttinConfig of a preset size; any EttinConfig / TransformerConfig field may be overridden.

    ``size=None`` builds a custom shape: num_layers, hidden_size, ffn_hidden_size and
    num_attention_heads must then be among the overrides (as when reading a Hugging Face config).

    ``seq_length`` (if given) is checked against the position limit here, so that a too-long sequence
    fails before the model is built.
    """
    if size is not None and size not in PRESETS:
        raise ConfigError(f"unknown model size {size!r}; use one of {', '.join(PRESETS)}.")
    seq_length = overrides.pop("seq_length", None)
    known = {f.name for f in fields(EttinConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; see ettin_megatron/config.py.")
    shapes = vars(PRESETS[size]) if size is not None else {}
    values = {**_ETTIN_FIXED, **shapes, **overrides}
    values.setdefault("use_cpu_initialization", not torch.cuda.is_available())
    # The dtype of activations sent between pipeline stages: the compute dtype.
    values.setdefault("pipeline_dtype", torch.bfloat16 if values.get("bf16") else values.get("params_dtype", torch.float32))
    config = EttinConfig(**values)
    if seq_length is not None:
        config.check_sequence_length(seq_length)
    return config


# The fields that define a trained model's function (what a checkpoint must remember to be rebuilt);
# parallelism, precision and dropout are properties of a run, not of the model.
MODEL_FIELDS = (
    "attention", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size",
    "max_position_embeddings", "global_attn_every_n_layers", "local_attention_window",
    "global_rope_theta", "local_rope_theta", "layernorm_epsilon", "init_method_std", "init_cutoff_factor",
)


def model_fields(config: EttinConfig) -> dict:
    """The JSON-able description of the model; ``ettin_config(None, **model_fields(c))`` rebuilds it."""
    return {name: getattr(config, name) for name in MODEL_FIELDS}
