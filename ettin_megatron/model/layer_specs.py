"""ModuleSpecs of the Ettin layer: a ``local`` spec (plain torch, runs anywhere) and a Transformer
Engine spec (TE linear layers: BF16 / FP8 GEMMs) used when TE imports.

A layer is pre-norm with no biases and a GeGLU MLP; layer 0 has no attention pre-norm because the
embedding output is already normed. The layer kind (global / local attention) is read by the
attention modules from their layer number, so one spec per position in the stack suffices.
"""

from __future__ import annotations

import importlib.util

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
    get_transformer_layer_offset,
)

from ..config import EttinConfig
from ..errors import ConfigError
from ..mcore_compat import mlp_submodule
from .attention import EttinCoreAttention
from .layers import AttentionOutputDropoutAdd, EttinLayerNorm, EttinSelfAttention

SPECS = ("auto", "local", "te")


def te_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def _linear_layers(spec: str):
    if spec == "te":
        from megatron.core.extensions.transformer_engine import (
            TEColumnParallelLinear,
            TERowParallelLinear,
        )

        return TEColumnParallelLinear, TERowParallelLinear
    return ColumnParallelLinear, RowParallelLinear


def resolve_spec(spec: str) -> str:
    """``auto`` is ``te`` when Transformer Engine imports, else ``local``."""
    if spec not in SPECS:
        raise ConfigError(f"unknown layer spec {spec!r}; use one of {', '.join(SPECS)}.")
    if spec == "auto":
        return "te" if te_available() else "local"
    if spec == "te" and not te_available():
        raise ConfigError("the te layer spec needs transformer-engine; install ettin-megatron[gpu] or use local.")
    return spec


def ettin_layer_spec(config: EttinConfig, layer_index: int, spec: str = "local") -> ModuleSpec:
    """The spec of 0-based layer ``layer_index``."""
    column, row = _linear_layers(spec)
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=IdentityOp if layer_index == 0 else EttinLayerNorm,
            self_attention=ModuleSpec(
                module=EttinSelfAttention,
                params={"attn_mask_type": AttnMaskType.causal if config.causal else AttnMaskType.no_mask},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=column,
                    core_attention=EttinCoreAttention,
                    linear_proj=row,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=ModuleSpec(
                module=AttentionOutputDropoutAdd, params={"dropout": config.attention_output_dropout}
            ),
            pre_mlp_layernorm=EttinLayerNorm,
            mlp=mlp_submodule(MLPSubmodules(linear_fc1=column, linear_fc2=row)),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def ettin_block_spec(config: EttinConfig, spec: str = "local", vp_stage: int | None = None):
    """The layers this pipeline stage (and virtual stage) builds, plus the final LayerNorm."""
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage)
    count = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(
        layer_specs=[ettin_layer_spec(config, offset + i, spec) for i in range(count)],
        layer_norm=EttinLayerNorm,
    )
