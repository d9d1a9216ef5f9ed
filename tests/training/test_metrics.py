"""MFU counts the attention each micro-batch's packed documents actually compute."""

import types

import pytest
import torch

from ettin_megatron.config import attention_of, ettin_config
from ettin_megatron.model.attention import AttentionMask, visibility
from ettin_megatron.model.counts import attended_pairs, attention_pairs
from ettin_megatron.training import metrics
from ettin_megatron.training.metrics import Metrics

CU_SEQLENS = torch.tensor([0, 5, 8, 20], dtype=torch.int32)  # documents of 5, 3 and 12 tokens

# By hand, per document of length L. Global: L^2 (bidirectional) or L(L+1)/2 (causal). Window 2 on each
# side (|i - j| <= 2): L + 2 * ((L-1) + (L-2)) pairs, or L + (L-1) + (L-2) when causal.
HAND = {
    (None, False): 25 + 9 + 144,                           # 178
    (None, True): 15 + 6 + 78,                             # 99
    (2, False): (5 + 2 * 7) + (3 + 2 * 3) + (12 + 2 * 21),  # 19 + 9 + 54 = 82
    (2, True): (5 + 7) + (3 + 3) + (12 + 21),               # 12 + 6 + 33 = 51
}


@pytest.mark.parametrize("window, causal", sorted(HAND, key=str))
def test_pairs_per_layer_by_hand(window, causal):
    assert attention_pairs(CU_SEQLENS, window, causal).item() == HAND[window, causal]
    lengths = (CU_SEQLENS[1:] - CU_SEQLENS[:-1]).tolist()  # and what the attention mask allows
    allowed = [visibility(n, AttentionMask(CU_SEQLENS, 12, window, causal), "cpu") for n in lengths]
    assert sum(n * n if a is None else int(a.sum()) for n, a in zip(lengths, allowed)) == HAND[window, causal]


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_model_pairs_and_mfu(objective, monkeypatch):
    """4 layers, global every 3rd (layers 0 and 3 global, 1 and 2 local), window 4 (2 on each side)."""
    config = ettin_config("tiny", vocab_size=256, attention=attention_of(objective), local_attention_window=4,
                          num_layers=4)
    causal = config.causal
    pairs = 2 * HAND[None, causal] + 2 * HAND[2, causal]
    assert attended_pairs(CU_SEQLENS, config).item() == pairs

    clock = iter([100.0, 102.0])  # the metrics' construction, then the step's log: 2 seconds
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(time=lambda: next(clock)))
    log = Metrics([], 10, None, None, config, num_params=1000, world_size=2, objective=objective)
    log.peak = 1e6  # FLOP/s per device, as if on a known GPU
    log.add_tokens(20, pairs)
    row = log.log_step(1, 4, 20, loss=1.0, lr=1e-3, grad_norm=None, batch_size=4)
    assert row["tokens"] == 20
    flops = 6 * 1000 * 20 + 12 * config.hidden_size * pairs
    assert row["mfu"] == pytest.approx(flops / 2.0 / (1e6 * 2), rel=1e-12)
