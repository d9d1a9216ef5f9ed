"""Acceptance: checkpoints trained / re-saved at TP=2 and PP=2 export to HF with matching logits,
and HF -> Megatron (TP=2, PP=2) -> HF is bit-exact."""

import json

import pytest
import torch

from ettin_megatron.config import ATTENTIONS
from ettin_megatron.convert.export_hf import megatron_to_hf
from ettin_megatron.convert.verify import load_hf_model

from .helpers import safetensors_dict
from .parallel_worker import LAYOUTS, TRAINED

CASES = [(layout, attention) for layout in TRAINED for attention in ATTENTIONS]
RESAVED = [(layout, attention) for layout in LAYOUTS for attention in ATTENTIONS]


@pytest.mark.parametrize("layout, attention", CASES, ids=[f"{l}-{o}" for l, o in CASES])
def test_trained_parallel_checkpoint_exports_with_matching_logits(parallel_run, layout, attention, tmp_path):
    losses = parallel_run["losses"][(layout, attention)]
    assert len(losses) == 3 and losses[-1] < losses[0]  # trained: same batch, falling loss
    out = megatron_to_hf(parallel_run["root"] / "trained" / layout / attention, tmp_path / "hf")
    hf = load_hf_model(out, attention)
    ids, mask = parallel_run["batch"]
    with torch.no_grad():
        reference = hf(input_ids=ids, attention_mask=mask).logits
    ours = parallel_run["logits"][(layout, attention)]  # computed by the 2-rank model itself
    keep = mask.bool()
    assert (~keep).any() and keep.sum(1).max() > 16  # padded rows, and rows longer than the window
    assert torch.isfinite(reference[keep]).all()
    assert (ours[keep] - reference[keep]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("layout, attention", RESAVED, ids=[f"{l}-{o}" for l, o in RESAVED])
def test_hf_to_megatron_at_parallel_layout_to_hf_is_bit_exact(parallel_run, hf_dirs, layout, attention, tmp_path):
    out = megatron_to_hf(parallel_run["root"] / "resaved" / layout / attention, tmp_path / "hf")
    original = safetensors_dict(hf_dirs[attention] / "model.safetensors")
    exported = safetensors_dict(out / "model.safetensors")
    assert set(exported) == set(original) - {"decoder.weight"}
    for name, tensor in exported.items():
        assert tensor.dtype == original[name].dtype and torch.equal(tensor, original[name]), name
    written, source = (json.loads((d / "config.json").read_text()) for d in (out, hf_dirs[attention]))
    for key in ("model_type", "layer_types", "rope_parameters", "local_attention", "vocab_size",
                "cls_token_id", "sep_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
        assert written[key] == source[key], key
    if attention == "bidirectional":
        assert (out / "tokenizer.json").read_bytes() == (hf_dirs[attention] / "tokenizer.json").read_bytes()
    else:  # the same tokenizer, but an exported decoder frames prompts [CLS] text, without [SEP]
        exported, original = (json.loads((d / "tokenizer.json").read_text()) for d in (out, hf_dirs[attention]))
        single = exported.pop("post_processor")["single"]
        original.pop("post_processor")
        assert exported == original
        assert [next(iter(piece.values()))["id"] for piece in single] == ["[CLS]", "A"]
