"""--verify: run both sides of a conversion on sample text and report the largest logit difference.

The Hugging Face side is transformers' own ModernBERT class loaded from the exported directory
(eager attention, float32); our side is the TP = PP = 1 EttinModel in float32. The texts are
tokenized with the conversion's tokenizer (the exported one, or the one stored with an imported
checkpoint) into one right-padded batch; HF computes the padded batch, ours the same rows unpadded
(packed, no compute on padding), and only non-pad positions are compared.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.batches import repad, unpad
from ..model import EttinModel, packed_seq_params
from .hf_files import read_hf_config_json
from .hf_mapping import ARCHITECTURES, MODEL_TYPES

SAMPLE_TEXTS = (
    "The capital of France is [MASK].",
    "Python is a programming language that lets you work quickly and integrate systems effectively.",
    "A short one.",
    "In 1905 Einstein published four papers that changed physics: on the photoelectric effect, Brownian "
    "motion, special relativity and the equivalence of mass and energy.",
)


def hf_model_class(attention: str):
    """transformers' class of a model of this attention: the encoder's or the decoder's."""
    import transformers

    return getattr(transformers, ARCHITECTURES[attention])


def load_hf_model(hf_dir: str | Path, attention: str):
    """transformers' model of ``hf_dir`` in float32 with the eager (reference) attention."""
    return hf_model_class(attention).from_pretrained(
        str(hf_dir), dtype=torch.float32, attn_implementation="eager", local_files_only=True
    ).eval()


def sample_batch(tokenizer_dir: str | Path, texts=SAMPLE_TEXTS) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    tokenizer.padding_side = "right"
    batch = tokenizer(list(texts), padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


@torch.no_grad()
def ettin_logits(model: EttinModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Our logits [b, s, vocab] of a right-padded batch (zeros at pad positions)."""
    packed = unpad(input_ids, attention_mask)
    params = packed_seq_params(packed["cu_seqlens"], packed["max_seqlen"])
    logits = model(packed["tokens"], packed["position_ids"], packed_seq_params=params)
    return repad(logits.float(), attention_mask)


@torch.no_grad()
def max_logit_difference(model: EttinModel, hf_model, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor) -> float:
    """max |ours - HF| over non-pad positions; inf when either side is not finite."""
    if next(model.parameters()).dtype != torch.float32:
        model.float()
    model.eval()
    ours = ettin_logits(model, input_ids, attention_mask)
    reference = hf_model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    keep = attention_mask.bool()
    ours, reference = ours[keep], reference[keep]
    if not (torch.isfinite(ours).all() and torch.isfinite(reference).all()):
        return math.inf
    return (ours - reference).abs().max().item()


def verify_against_dir(model: EttinModel, hf_dir: str | Path, texts=SAMPLE_TEXTS) -> float:
    """Compare ``model`` with the HF directory ``hf_dir`` (same architecture) on ``texts``, tokenized
    with the directory's own tokenizer (an export always writes one)."""
    hf_model = load_hf_model(hf_dir, model.config.attention)
    return max_logit_difference(model, hf_model, *sample_batch(hf_dir, texts))


def verify_import(checkpoint: str | Path, hf_dir: str | Path, attention: str | None = None,
                  texts=SAMPLE_TEXTS) -> float:
    """Reload a converted checkpoint and compare with the HF directory it came from.

    The texts are tokenized with the tokenizer stored with the checkpoint (the import's --tokenizer or
    the directory's own), since the HF directory itself may have none; it is looked up before the model
    is loaded. For an import as the other attention (encoder <-> decoder) the reference is transformers'
    class of the *target* architecture holding the source weights (built from the directory's tensors
    through the mapping)."""
    from .hf_files import resolve_tokenizer
    from .megatron_side import load_megatron_model, read_description

    directory, description = read_description(checkpoint)
    batch = sample_batch(resolve_tokenizer(description.get("tokenizer"), relative_to=directory), texts)
    model, _ = load_megatron_model(directory, attention)
    if model.config.attention == _source_attention(hf_dir):
        reference = load_hf_model(hf_dir, model.config.attention)
    else:
        reference = _other_attention_reference(hf_dir, model.config)
    return max_logit_difference(model, reference, *batch)


def _other_attention_reference(hf_dir, target_config):
    """transformers' model of ``target_config``'s architecture holding the weights of ``hf_dir``."""
    from .hf_mapping import HF_TOKEN_ID_FIELDS, from_hf_state_dict, hf_config, to_hf_state_dict
    from .import_hf import read_hf_model_fields
    from .megatron_side import conversion_config
    from .safetensors_io import HFWeights

    hf_json = read_hf_config_json(hf_dir)
    special = {k: hf_json[k] for k in HF_TOKEN_ID_FIELDS if k in hf_json}
    weights = from_hf_state_dict(HFWeights(hf_dir), conversion_config(read_hf_model_fields(hf_dir)))
    target = hf_model_class(target_config.attention)(hf_config(target_config, special))
    target.load_state_dict(to_hf_state_dict(weights, target_config), strict=False)
    target.tie_weights()
    return target.float().eval()


def _source_attention(hf_dir) -> str:
    model_type = read_hf_config_json(hf_dir)["model_type"]
    return {v: k for k, v in MODEL_TYPES.items()}[model_type]
