"""Tiny random Hugging Face ModernBERT models and the Ettin models loaded from them (test helpers)."""

from __future__ import annotations

import torch
import transformers

from ettin_megatron.config import ettin_config
from ettin_megatron.convert.hf_mapping import ettin_overrides_from_hf, from_hf_state_dict, hf_config
from ettin_megatron.model import EttinModel

VOCAB = 512
SPECIAL_IDS = {"cls_token_id": 1, "sep_token_id": 2, "pad_token_id": 3}


def tiny_config(objective: str, **overrides):
    """A tiny Ettin config; overrides change window, thetas, layer pattern, depth."""
    values = dict(vocab_size=VOCAB, objective=objective, local_attention_window=16, num_layers=4)
    values.update(overrides)
    return ettin_config("tiny", **values)


def random_hf_model(config, seed: int = 0):
    """A randomly initialised transformers model with the architecture of ``config``."""
    hf_cfg = hf_config(config, SPECIAL_IDS)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    cls = transformers.ModernBertForMaskedLM if config.objective == "mlm" else transformers.ModernBertDecoderForCausalLM
    return cls(hf_cfg).eval()


def ettin_from_hf(hf_model, **config_overrides) -> EttinModel:
    """Build our model from the HF config alone and load the HF weights through the mapping."""
    config = ettin_config(None, **ettin_overrides_from_hf(hf_model.config), **config_overrides)
    model = EttinModel(config, spec="local")
    model.load_state_dict(from_hf_state_dict(hf_model.state_dict(), config), strict=True)
    return model.eval()
