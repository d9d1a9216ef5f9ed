"""Activation recompute changes memory, not results: full (uniform and block) and selective recompute
train to the same losses and gradient norms as no recompute, bit for bit on the CPU, with dropout on
(Megatron's checkpoint function replays the RNG state, so the recomputed dropout masks are the same).
That recompute happens is seen in the core-attention calls: the recomputed layers run theirs twice."""

import pytest

from tests.ranks import run_ranks
from tests.training.training_data import base_args, write_corpus

RECOMPUTE = {
    "full uniform": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=2),
    "full block": dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=3),
    "selective": dict(recompute_granularity="selective"),
}


def _train(rank, prefix):
    from ettin_megatron.model.attention import EttinCoreAttention
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    calls = []
    forward = EttinCoreAttention.forward

    def counted(self, *args, **kwargs):
        calls.append(id(self))  # one core attention per layer
        return forward(self, *args, **kwargs)

    EttinCoreAttention.forward = counted

    def run(**recompute):
        calls.clear()
        args = make_arguments(**base_args(prefix, train_iters=3, attention_output_dropout=0.1, **recompute))
        losses = [(r["loss"], r["grad_norm"]) for r in pretrain(args) if "loss" in r]
        return losses, [calls.count(layer) for layer in dict.fromkeys(calls)]  # per layer, in order

    return run(), {name: run(**flags) for name, flags in RECOMPUTE.items()}


@pytest.mark.timeout(900)
def test_recompute_leaves_losses_unchanged(tmp_path):
    (((plain, calls), recomputed),) = run_ranks(1, _train, write_corpus(tmp_path), timeout=800)
    assert len(plain) == 3
    assert {name: losses for name, (losses, _) in recomputed.items()} == {name: plain for name in RECOMPUTE}
    once = calls[0]  # 3 steps x 4 micro-batches, no evaluation
    assert calls == [once] * 4
    assert recomputed["full uniform"][1] == [2 * once] * 4
    assert recomputed["full block"][1] == [2 * once] * 3 + [once]
    assert recomputed["selective"][1] == [2 * once] * 4
