"""Our model computes what transformers' ModernBERT computes, and the weight mapping is lossless.

The random weights are large enough (std 0.15) that attention is peaked, so positions matter: with HF's
0.02 init, attention is nearly uniform and swapping the two RoPE thetas moved the logits by 7e-5, under
the old 1e-4 tolerance. The tolerance is relative to the logits' scale, near the real float32 error:
observed 2e-6 to 4.5e-6 of max |logit| (2 cores, torch 2.13), allowed 2e-5. A wrong theta or window
is off by 0.15 to 1.4 of it (test_a_wrong_theta_or_window_fails_parity).
"""

import pytest
import torch

from ettin_megatron.convert.hf_mapping import from_hf_state_dict, to_hf_state_dict
from ettin_megatron.data.batches import repad, unpad
from ettin_megatron.model import packed_seq_params
from tests.hf_models import VOCAB, ettin_from_hf, random_hf_model, tiny_config

# Each case exercises something the default shape would not: long sequences against a small window,
# non-default thetas, a global-every-n other than 3, and a depth not divisible by 3.
CASES = {
    "default": {},
    "thetas": dict(global_rope_theta=160_000.0, local_rope_theta=2_500.0),
    "every_2_depth_5": dict(global_attn_every_n_layers=2, num_layers=5),
    "depth_7_wide_window": dict(num_layers=7, local_attention_window=32, global_rope_theta=50_000.0),
}
PEAKED = 0.15  # std of the random weights
RTOL = 2e-5  # of the largest reference logit


def assert_parity(logits, reference):
    scale = reference.abs().max().item()
    assert torch.isfinite(logits).all()
    assert (logits - reference).abs().max().item() <= RTOL * scale


def padded_batch(lengths, total, seed=0):
    """Random ids (never the special ids 0-3) right-padded with the pad id to ``total``."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), total), 3)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(4, VOCAB, (n,), generator=generator)
        mask[row, :n] = 1
    return ids, mask


def packed_logits(model, ids, mask):
    """Our logits for a right-padded HF batch, run packed and scattered back to [b, s, vocab]."""
    packed = unpad(ids, mask)
    with torch.no_grad():
        logits = model(packed["tokens"], packed["position_ids"],
                       packed_seq_params=packed_seq_params(packed["cu_seqlens"], packed["max_seqlen"]))
    return repad(logits, mask)


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_on_padded_batches(attention, case):
    hf = random_hf_model(tiny_config(attention, **CASES[case]), std=PEAKED)
    # 16-token window: 70 and 50 tokens are several windows long; the third row is short.
    ids, mask = padded_batch([70, 50, 9], total=70)
    with torch.no_grad():
        reference = hf(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert_parity(packed_logits(ettin_from_hf(hf), ids, mask)[keep], reference[keep])


# Each would go unnoticed with nearly uniform attention (HF's init) or an absolute 1e-4 tolerance.
WRONG = {
    "thetas_swapped": dict(global_rope_theta=10_000.0, local_rope_theta=160_000.0),
    "global_theta_10k": dict(global_rope_theta=10_000.0),
    "local_theta_20k": dict(local_rope_theta=20_000.0),
    "window_18": dict(local_attention_window=18),  # 9 tokens on each side instead of 8
}


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
@pytest.mark.parametrize("wrong", sorted(WRONG))
def test_a_wrong_theta_or_window_fails_parity(attention, wrong):
    """The parity check is sensitive: our model built with one wrong RoPE theta or window fails it."""
    hf = random_hf_model(tiny_config(attention), std=PEAKED)
    ids, mask = padded_batch([70, 50, 9], total=70)
    with torch.no_grad():
        reference = hf(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    logits = packed_logits(ettin_from_hf(hf, **WRONG[wrong]), ids, mask)[keep]
    with pytest.raises(AssertionError):
        assert_parity(logits, reference[keep])
    assert (logits - reference[keep]).abs().max() > 1000 * RTOL * reference[keep].abs().max()


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_unpacked_batch_matches_transformers(attention):
    """A regular [b, s] batch without padding takes the sbhd path; same logits as HF."""
    hf = random_hf_model(tiny_config(attention, num_layers=5), std=PEAKED)
    ours = ettin_from_hf(hf)
    ids, _ = padded_batch([40, 40], total=40, seed=1)
    with torch.no_grad():
        reference = hf(input_ids=ids).logits
        logits = ours(ids, torch.arange(40).expand(2, 40))
    assert_parity(logits, reference)


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_ours_to_hf_to_ours_is_bit_exact(attention):
    hf = random_hf_model(tiny_config(attention, num_layers=5, global_attn_every_n_layers=2))
    ours = ettin_from_hf(hf)
    exported = to_hf_state_dict(ours.state_dict(), ours.config)
    reference = hf.state_dict()
    assert set(exported) == set(reference) - {"decoder.weight"}  # tied to the embedding
    for name, tensor in exported.items():
        assert torch.equal(tensor, reference[name]), name
    again = from_hf_state_dict(exported, ours.config)  # and back through the import mapping
    weights = {name: t for name, t in ours.state_dict().items() if not name.endswith("_extra_state")}
    assert set(again) == set(weights)
    for name, tensor in weights.items():
        assert torch.equal(again[name], tensor), name


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_written_config_names_layer_types_and_both_thetas(attention):
    config = tiny_config(attention, num_layers=5, global_attn_every_n_layers=2,
                         global_rope_theta=160_000.0, local_rope_theta=10_000.0)
    written = random_hf_model(config).config.to_dict()
    assert written["layer_types"] == ["full_attention", "sliding_attention"] * 2 + ["full_attention"]
    assert written["rope_parameters"]["full_attention"]["rope_theta"] == 160_000.0
    assert written["rope_parameters"]["sliding_attention"]["rope_theta"] == 10_000.0
