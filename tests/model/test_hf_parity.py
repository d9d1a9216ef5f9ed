"""Our model computes what transformers' ModernBERT computes, and the weight mapping is lossless."""

import pytest
import torch

from ettin_megatron.convert.hf_mapping import to_hf_state_dict
from ettin_megatron.data.batches import repad, unpad
from ettin_megatron.model import packed_seq_params

from .hf_models import VOCAB, ettin_from_hf, random_hf_model, tiny_config

# Each case exercises something the default shape would not: long sequences against a small window,
# non-default thetas, a global-every-n other than 3, and a depth not divisible by 3.
CASES = {
    "default": {},
    "thetas": dict(global_rope_theta=160_000.0, local_rope_theta=2_500.0),
    "every_2_depth_5": dict(global_attn_every_n_layers=2, num_layers=5),
    "depth_7_wide_window": dict(num_layers=7, local_attention_window=32, global_rope_theta=50_000.0),
}


def padded_batch(lengths, total, seed=0):
    """Random ids (never the special ids 0-3) right-padded with the pad id to ``total``."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), total), 3)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(4, VOCAB, (n,), generator=generator)
        mask[row, :n] = 1
    return ids, mask


@pytest.mark.parametrize("objective", ["mlm", "clm"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_on_padded_batches(objective, case):
    hf = random_hf_model(tiny_config(objective, **CASES[case]))
    ours = ettin_from_hf(hf)
    # 16-token window: 70 and 50 tokens are several windows long; the third row is short.
    ids, mask = padded_batch([70, 50, 9], total=70)
    with torch.no_grad():
        reference = hf(input_ids=ids, attention_mask=mask).logits
        packed = unpad(ids, mask)
        logits = ours(packed["tokens"], packed["position_ids"],
                      packed_seq_params=packed_seq_params(packed["cu_seqlens"], packed["max_seqlen"]))
    logits = repad(logits, mask)
    keep = mask.bool()
    assert torch.isfinite(logits[keep]).all()
    assert (logits[keep] - reference[keep]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_unpacked_batch_matches_transformers(objective):
    """A regular [b, s] batch without padding takes the sbhd path; same logits as HF."""
    hf = random_hf_model(tiny_config(objective, num_layers=5))
    ours = ettin_from_hf(hf)
    ids, _ = padded_batch([40, 40], total=40, seed=1)
    with torch.no_grad():
        reference = hf(input_ids=ids).logits
        logits = ours(ids, torch.arange(40).expand(2, 40))
    assert (logits - reference).abs().max().item() <= 1e-4


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_ours_to_hf_to_ours_is_bit_exact(objective):
    hf = random_hf_model(tiny_config(objective, num_layers=5, global_attn_every_n_layers=2))
    ours = ettin_from_hf(hf)
    exported = to_hf_state_dict(ours.state_dict(), ours.config)
    reference = hf.state_dict()
    assert set(exported) == set(reference) - {"decoder.weight"}  # tied to the embedding
    for name, tensor in exported.items():
        assert torch.equal(tensor, reference[name]), name
    again = ettin_from_hf(hf)
    again.load_state_dict(ours.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), again.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_written_config_names_layer_types_and_both_thetas(objective):
    config = tiny_config(objective, num_layers=5, global_attn_every_n_layers=2,
                         global_rope_theta=160_000.0, local_rope_theta=10_000.0)
    written = random_hf_model(config).config.to_dict()
    assert written["layer_types"] == ["full_attention", "sliding_attention"] * 2 + ["full_attention"]
    assert written["rope_parameters"]["full_attention"]["rope_theta"] == 160_000.0
    assert written["rope_parameters"]["sliding_attention"]["rope_theta"] == 10_000.0
