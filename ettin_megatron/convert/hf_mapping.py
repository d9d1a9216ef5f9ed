"""The correspondence between EttinModel and Hugging Face's ModernBERT classes, both directions.

Encoders map to ``ModernBertForMaskedLM`` (model_type ``modernbert``), decoders to
``ModernBertDecoderForCausalLM`` (``modernbert-decoder``). This module works on full (TP=PP=1) state
dicts and on configs; sharded checkpoints are gathered / re-sharded by dist_checkpointing around it.

Two layouts differ:

* QKV: Megatron's ``linear_qkv`` rows are grouped per head ([q_h, k_h, v_h] for each head h);
  ModernBERT's ``Wqkv`` is [Q of all heads | K | V]; the decoder has separate q/k/v projections.
* The decoder's local window: Ettin's causal window sees ``w + 1`` keys (j in [i - w, i], with
  ``w = local_attention // 2``), HF's ``sliding_window`` counts the keys it sees, so we write
  ``local_attention = 2 * (w + 1)`` (HF derives ``sliding_window = w + 1``) and read it back the same way.

Written configs name ``layer_types`` and both RoPE thetas explicitly, since their defaults changed
between transformers versions.
"""

from __future__ import annotations

import torch

from ..config import EttinConfig
from ..errors import ConfigError
from ..vocab import MODERNBERT_IDS

#: The Hugging Face model type and class of each attention (EttinConfig.attention).
MODEL_TYPES = {"bidirectional": "modernbert", "causal": "modernbert-decoder"}
ARCHITECTURES = {"bidirectional": "ModernBertForMaskedLM", "causal": "ModernBertDecoderForCausalLM"}
#: The special-token fields a Hugging Face ModernBERT config holds.
HF_TOKEN_ID_FIELDS = ("cls_token_id", "sep_token_id", "pad_token_id")
#: The config.json key that marks an encoder trained with MNTP (LLM2Vec's masked next-token prediction,
#: the decoder -> encoder recipe): its output at position i predicts token i + 1, not token i, so a
#: masked token is read from the position before it (tools/fill_mask.py does). Stock transformers
#: ignores the key; embeddings and fine-tuning do not depend on the head's offset.
TRAINING_OBJECTIVE_KEY = "ettin_training_objective"
#: ModernBERT / ModernBertDecoder config fields that change the forward pass, with the one value an
#: Ettin model implements (what hf_config_dict writes). The others either map to EttinConfig fields
#: (ettin_overrides_from_hf) or leave the forward pass alone: dropouts, deterministic_flash_attn,
#: sparse_prediction, classifier_pooling / classifier_dropout (other heads), use_cache, token ids.
FIXED_HF_FIELDS = {
    "hidden_activation": "gelu", "classifier_activation": "gelu", "norm_bias": False,
    "attention_bias": False, "mlp_bias": False, "classifier_bias": False, "decoder_bias": True,
    "tie_word_embeddings": True,
}


def _layer_types(config: EttinConfig) -> list[str]:
    return [
        "full_attention" if config.is_global_layer(i) else "sliding_attention"
        for i in range(config.num_layers)
    ]


SAME_FIELDS = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "intermediate_size": "ffn_hidden_size",
               "num_hidden_layers": "num_layers", "num_attention_heads": "num_attention_heads",
               "max_position_embeddings": "max_position_embeddings", "initializer_range": "init_method_std",
               "norm_eps": "layernorm_epsilon"}
"""HF config field -> EttinConfig field, for the fields that carry the same value under both names."""


def hf_config_dict(config: EttinConfig, special_ids: dict | None = None) -> dict:
    """The Hugging Face config (as keyword arguments) of an Ettin model.

    ``special_ids`` holds cls/sep/pad token ids (other keys are ignored); ModernBERT's are the default. [CLS] doubles as BOS
    and [SEP] as EOS, as in Ettin's decoders.
    """
    given = {**MODERNBERT_IDS.token_id_fields(), **(special_ids or {})}
    ids = {k: given[k] for k in HF_TOKEN_ID_FIELDS}
    if max(ids.values()) >= config.vocab_size:
        raise ConfigError(
            f"special token ids {ids} do not fit the vocabulary of {config.vocab_size}; pass the "
            "tokenizer's ids."
        )
    window = config.local_attention_window
    rope = {
        "full_attention": {"rope_type": "default", "rope_theta": float(config.global_rope_theta)},
        "sliding_attention": {"rope_type": "default", "rope_theta": float(config.local_rope_theta)},
    }
    return dict(
        model_type=MODEL_TYPES[config.attention],
        architectures=[ARCHITECTURES[config.attention]],
        **{hf_name: getattr(config, name) for hf_name, name in SAME_FIELDS.items()},
        initializer_cutoff_factor=config.init_cutoff_factor,
        attention_dropout=0.0,
        embedding_dropout=0.0,
        mlp_dropout=0.0,
        layer_types=_layer_types(config),
        **FIXED_HF_FIELDS,
        rope_parameters=rope,
        local_attention=window if not config.causal else 2 * (window // 2 + 1),
        bos_token_id=ids["cls_token_id"],
        eos_token_id=ids["sep_token_id"],
        **ids,
    )


def hf_config(config: EttinConfig, special_ids: dict | None = None):
    """A transformers config object for ``config`` (ModernBertConfig or ModernBertDecoderConfig)."""
    from transformers import AutoConfig

    kwargs = hf_config_dict(config, special_ids)
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def _global_every(layer_types: list[str]) -> int:
    """The n of ``i % n == 0 -> global`` that reproduces ``layer_types``; error if none does."""
    for n in range(1, len(layer_types) + 1):
        if all((t == "full_attention") == (i % n == 0) for i, t in enumerate(layer_types)):
            return n
    raise ConfigError(
        "this checkpoint's layer_types are not 'global every n-th layer from layer 0'; Ettin models "
        "cannot represent it."
    )


def ettin_overrides_from_hf(hf) -> dict:
    """EttinConfig fields (for ``ettin_config(None, **fields)``) that reproduce a HF ModernBERT config."""
    attention = {v: k for k, v in MODEL_TYPES.items()}.get(hf.model_type)
    if attention is None:
        raise ConfigError(
            f"model type {hf.model_type!r} is not a ModernBERT encoder or decoder; expected one of "
            f"{', '.join(MODEL_TYPES.values())}."
        )
    for name, implemented in FIXED_HF_FIELDS.items():
        if getattr(hf, name, implemented) != implemented:
            raise ConfigError(f"config.json sets {name} = {getattr(hf, name)!r}; Ettin models implement only "
                              f"{implemented!r}, so the import would compute a different model.")
    for layer_type, rope in hf.rope_parameters.items():
        if rope.get("rope_type", "default") != "default":
            raise ConfigError(f"config.json sets {layer_type} rope_type {rope['rope_type']!r}; Ettin models "
                              "implement only plain RoPE ('default').")
    if attention == "causal":
        window = 2 * (hf.sliding_window - 1)
    else:
        window = hf.local_attention
    return dict(
        attention=attention,
        **{name: getattr(hf, hf_name) for hf_name, name in SAME_FIELDS.items()},
        global_attn_every_n_layers=_global_every(list(hf.layer_types)),
        local_attention_window=window,
        global_rope_theta=hf.rope_parameters["full_attention"]["rope_theta"],
        local_rope_theta=hf.rope_parameters["sliding_attention"]["rope_theta"],
    )


def _names(config: EttinConfig, i: int) -> list[tuple[str, str]]:
    """(Megatron, HF) names of layer i's tensors that map one to one."""
    m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
    pairs = [
        (m + "self_attention.linear_proj.weight", h + "attn.Wo.weight"),
        (m + "pre_mlp_layernorm.weight", h + "mlp_norm.weight"),
        (m + "mlp.linear_fc1.weight", h + "mlp.Wi.weight"),
        (m + "mlp.linear_fc2.weight", h + "mlp.Wo.weight"),
    ]
    if i > 0:
        pairs.append((m + "input_layernorm.weight", h + "attn_norm.weight"))
    return pairs


def _model_names(config: EttinConfig) -> list[tuple[str, str]]:
    head = "lm_head" if config.causal else "head"
    pairs = [
        ("embedding.word_embeddings.weight", "model.embeddings.tok_embeddings.weight"),
        ("embedding_norm.weight", "model.embeddings.norm.weight"),
        ("decoder.final_layernorm.weight", "model.final_norm.weight"),
        ("head.dense.weight", f"{head}.dense.weight"),
        ("head.norm.weight", f"{head}.norm.weight"),
        ("output_layer.bias", "decoder.bias"),
    ]
    for i in range(config.num_layers):
        pairs += _names(config, i)
    return pairs


def _qkv_view(weight: torch.Tensor, config: EttinConfig) -> torch.Tensor:
    return weight.view(config.num_attention_heads, 3, config.kv_channels, config.hidden_size)


def to_hf_state_dict(state_dict: dict, config: EttinConfig) -> dict[str, torch.Tensor]:
    """Full Megatron state dict -> HF state dict (without the tied ``decoder.weight``)."""
    out = {hf: state_dict[m] for m, hf in _model_names(config)}
    for i in range(config.num_layers):
        q, k, v = _qkv_view(state_dict[f"decoder.layers.{i}.self_attention.linear_qkv.weight"], config).unbind(1)
        q, k, v = (x.reshape(-1, config.hidden_size) for x in (q, k, v))
        prefix = f"model.layers.{i}.attn."
        if config.causal:
            out.update({prefix + "q_proj.weight": q, prefix + "k_proj.weight": k, prefix + "v_proj.weight": v})
        else:
            out[prefix + "Wqkv.weight"] = torch.cat([q, k, v])
    return {name: tensor.contiguous() for name, tensor in out.items()}


def hf_shapes(config: EttinConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of ``config``'s HF model (the tied ``decoder.weight`` aside), from the
    config alone, so that a checkpoint is checked before any of its weights is read."""
    hidden, vocab, ffn = config.hidden_size, config.vocab_size, config.ffn_hidden_size
    attention, norm = config.num_attention_heads * config.kv_channels, (config.hidden_size,)
    megatron = {  # by Megatron name, without the "decoder.layers.{i}." of per-layer tensors
        "embedding.word_embeddings.weight": (vocab, hidden),
        "embedding_norm.weight": norm,
        "decoder.final_layernorm.weight": norm,
        "head.dense.weight": (hidden, hidden),
        "head.norm.weight": norm,
        "output_layer.bias": (vocab,),
        "self_attention.linear_proj.weight": (hidden, attention),
        "input_layernorm.weight": norm,
        "pre_mlp_layernorm.weight": norm,
        "mlp.linear_fc1.weight": (ffn * (2 if config.gated_linear_unit else 1), hidden),
        "mlp.linear_fc2.weight": (hidden, ffn),
    }
    shapes = {hf: megatron[m.split(".", 3)[-1] if m.startswith("decoder.layers.") else m]
              for m, hf in _model_names(config)}
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}.attn."
        if config.causal:
            shapes.update({prefix + f"{x}_proj.weight": (attention, hidden) for x in "qkv"})
        else:
            shapes[prefix + "Wqkv.weight"] = (3 * attention, hidden)
    return shapes


def check_hf_tensor(name: str, shape, expected: dict[str, tuple[int, ...]]) -> None:
    """One line naming ``name`` when it is missing (``shape`` None) or not the shape ``expected`` (from
    ``hf_shapes``) gives it."""
    if shape is None:
        raise ConfigError(f"tensor {name!r} is missing from the Hugging Face checkpoint.")
    if tuple(shape) != expected[name]:
        raise ConfigError(
            f"shape mismatch: {name} is {tuple(shape)} in the Hugging Face checkpoint but config.json implies "
            f"{expected[name]}."
        )


def from_hf_state_dict(hf_state_dict, config: EttinConfig) -> dict:
    """HF state dict -> full Megatron state dict; every tensor is checked for presence and shape.

    The values may be tensors or anything with a ``shape`` (import_hf passes file locations for all
    but the attention matrices, which are re-laid here and must be tensors); those pass through."""
    expected = hf_shapes(config)

    def get(name: str):
        value = hf_state_dict[name] if name in hf_state_dict else None
        check_hf_tensor(name, None if value is None else value.shape, expected)
        return value

    out = {m: get(hf) for m, hf in _model_names(config)}
    heads, dim, hidden = config.num_attention_heads, config.kv_channels, config.hidden_size
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}.attn."
        if config.causal:
            qkv = torch.stack([get(prefix + f"{x}_proj.weight") for x in "qkv"])
        else:
            qkv = get(prefix + "Wqkv.weight")
        qkv = qkv.reshape(3, heads, dim, hidden).transpose(0, 1).reshape(3 * heads * dim, hidden)
        out[f"decoder.layers.{i}.self_attention.linear_qkv.weight"] = qkv.contiguous()
    return out
