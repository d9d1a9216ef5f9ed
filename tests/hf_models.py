"""Tiny Ettin configs, random Hugging Face ModernBERT models and the Ettin models loaded from them
(helpers of the model and the conversion tests)."""

from __future__ import annotations

import torch

from ettin_megatron.config import ettin_config
from ettin_megatron.convert.hf_mapping import ettin_overrides_from_hf, from_hf_state_dict, hf_config
from ettin_megatron.convert.verify import hf_model_class
from ettin_megatron.model import EttinModel

VOCAB = 384  # the conversion tests' tokenizer has at most this; a multiple of 64 (splits over TP=2)
SPECIAL_IDS = {"cls_token_id": 1, "sep_token_id": 2, "pad_token_id": 3}


def tiny_config(attention: str, **overrides):
    """A tiny Ettin config with different global and local thetas; overrides change window, thetas,
    layer pattern, depth."""
    values = dict(vocab_size=VOCAB, attention=attention, local_attention_window=16, num_layers=4,
                  global_rope_theta=160_000.0, local_rope_theta=10_000.0)
    values.update(overrides)
    return ettin_config("tiny", **values)


def random_hf_model(config, special_ids: dict = SPECIAL_IDS, seed: int = 0, std: float = 0.05):
    """A transformers model with the architecture of ``config`` whose every weight is random: normal
    with ``std`` (norm weights around 1). HF's own init (0.02) leaves attention nearly uniform, where
    positions hardly matter; a larger ``std`` makes it peaked."""
    hf_cfg = hf_config(config, special_ids)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = hf_model_class(config.attention)(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * std + (1.0 if "norm" in name else 0.0))
    return model


def ettin_from_hf(hf_model, **config_overrides) -> EttinModel:
    """Build our model from the HF config (``config_overrides`` change it) and load the HF weights
    through the mapping."""
    config = ettin_config(None, **{**ettin_overrides_from_hf(hf_model.config), **config_overrides})
    model = EttinModel(config, spec="local")
    model.load_state_dict(from_hf_state_dict(hf_model.state_dict(), config), strict=True)
    return model.eval()
