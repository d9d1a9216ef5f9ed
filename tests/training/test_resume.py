"""Resuming is exact, and an interrupted save never costs the previous checkpoint.

2N steps straight == N steps, save, resume, N steps: bit-exact losses, grad norms and LRs on the CPU
(attention-output dropout on, so the restored RNG state matters; a warmup spanning the save, so the
restored scheduler does). A save that fails after its data is written but before the rename removes
its ``iter_2N.tmp``; ``latest`` still names N, and resuming from it reproduces the straight run, past
the stale ``iter_2N.tmp`` a killed process would leave, which the resumed run's own save replaces.
"""

import os

import pytest

from tests.ranks import run_ranks
from tests.training.training_data import base_args, write_corpus

N = 3


class _Killed(Exception):
    pass


def _run(prefix, **overrides):
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    args = make_arguments(**base_args(prefix, attention_output_dropout=0.1, lr_warmup_iters=2 * N,
                                      lr_decay_iters=2 * N, **overrides))  # one schedule for every part
    return [(r["loss"], r["grad_norm"], r["lr"]) for r in pretrain(args) if "loss" in r]


def _resume(rank, prefix, root):
    from ettin_megatron import checkpoint

    straight = _run(prefix, train_iters=2 * N)
    first = _run(prefix, train_iters=N, save=root)

    real_save = checkpoint.dist_checkpointing.save

    def killed_save(state, directory, *args, **kwargs):
        real_save(state, directory, *args, **kwargs)
        raise _Killed  # the save fails after writing, before the rename and the latest marker

    checkpoint.dist_checkpointing.save = killed_save
    try:
        _run(prefix, train_iters=2 * N, load=root, save=root)
        raise AssertionError("the patched save should have interrupted the run")
    except _Killed:
        pass
    finally:
        checkpoint.dist_checkpointing.save = real_save
    after_kill = {"latest": checkpoint.latest_iteration(root), "entries": sorted(os.listdir(root))}

    # What a kill -9 mid-save leaves (no exception handler ran): a stale, partial iter_2N.tmp.
    os.makedirs(os.path.join(root, f"iter_{2 * N:07d}.tmp", "partial"))
    second = _run(prefix, train_iters=2 * N, load=root, save=root)
    after_resume = sorted(os.listdir(root))

    # Batch-size warm-up in the loop: 8 -> 16 -> 24 samples per step (micro batch 2, DP 1), 16 samples
    # per increment, until 112 samples are consumed.
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    ramp = make_arguments(**base_args(prefix, global_batch_size=24, rampup_batch_size=[8, 8, 32],
                                      train_iters=None, train_samples=112))
    sizes = [r["batch_size"] for r in pretrain(ramp) if "loss" in r]
    return straight, first, second, after_kill, after_resume, sizes


@pytest.mark.timeout(300)
def test_resume_is_bit_exact_and_survives_an_interrupted_save(tmp_path):
    prefix = write_corpus(tmp_path)
    root = str(tmp_path / "ckpt")
    ((straight, first, second, after_kill, after_resume, ramp_sizes),) = run_ranks(1, _resume, prefix, root)
    assert ramp_sizes == [8, 8, 16, 24, 24, 24, 24], ramp_sizes
    assert after_kill["latest"] == N
    assert after_kill["entries"] == [f"iter_{N:07d}", "latest_checkpointed_iteration.txt"]
    assert after_resume == [f"iter_{N:07d}", f"iter_{2 * N:07d}", "latest_checkpointed_iteration.txt"]
    assert len(straight) == 2 * N and len(first) == N and len(second) == N
    assert first == straight[:N]
    assert second == straight[N:]  # bit-exact: ==, not approx


# A token budget with Ettin's shape: warm-up, WSD 1-sqrt anneal and batch-size ramp-up all in tokens.
TOKENS, WARMUP, ANNEAL, RAMP = 3000, 500, 1200, 800
PEAK, FLOOR = 3e-3, 3e-4


def _token_run(prefix, **overrides):
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    args = make_arguments(**base_args(
        prefix, train_iters=None, train_tokens=TOKENS, lr_warmup_iters=0, lr_warmup_tokens=WARMUP,
        lr_decay_style="WSD", lr_wsd_decay_style="minus_sqrt", lr_wsd_decay_tokens=ANNEAL, lr=PEAK, min_lr=FLOOR,
        global_batch_size=24, rampup_batch_size_tokens=[8, 8, RAMP], attention_output_dropout=0.1, **overrides))
    rows = [(r["loss"], r["grad_norm"], r["lr"], r["tokens"], r["batch_size"])
            for r in pretrain(args) if "loss" in r]
    return args, rows


def _token_budget(rank, prefix, root):
    from ettin_megatron.training import batching
    from ettin_megatron.training.plan import plan_run

    # The straight run with no estimate of the samples it needs: its train split is built for
    # TOKENS / seq_length samples and grown each time a step would read past it. The interrupted and
    # resumed runs size theirs from the mean sample length; growing must change no sample.
    builds, real_build, real_estimate = [], batching.run_datasets, batching.token_budget_samples
    batching.run_datasets = lambda plan, n, *rest: builds.append(n) or real_build(plan, n, *rest)
    batching.token_budget_samples = lambda args, dataset, consumed, tokens: consumed
    try:
        args, straight = _token_run(prefix)
    finally:
        batching.run_datasets, batching.token_budget_samples = real_build, real_estimate
    _, first = _token_run(prefix, save=root, exit_interval=N)
    _, second = _token_run(prefix, load=root, save=root)

    # Each step's input tokens, read from the samples themselves.
    train, _ = real_build(plan_run(args, 1), 1000, 0)
    sample_tokens = [len(train[i]["tokens"]) for i in range(1000)]
    return straight, first, second, builds, sample_tokens


@pytest.mark.timeout(600)
def test_token_budget_stops_schedules_and_resumes_exactly(tmp_path):
    from tests.training.test_schedule import _formula

    prefix = write_corpus(tmp_path, num_docs=60)  # 54 training documents: the run reads several epochs
    ((straight, first, second, builds, sample_tokens),) = run_ranks(
        1, _token_budget, prefix, str(tmp_path / "ckpt"), timeout=600)
    tokens = [row[3] for row in straight]
    assert tokens[-1] >= TOKENS > tokens[-2]  # stops at the first step that reaches the budget
    consumed_samples, consumed_tokens = 0, 0
    for loss, grad_norm, lr, tokens_after, batch_size in straight:
        # The batch follows the ramp-up in tokens: 8 -> 16 -> 24, one increment per RAMP / 2 tokens.
        assert batch_size == min(24, 8 + 8 * (consumed_tokens // (RAMP // 2)))
        consumed_tokens += sum(sample_tokens[consumed_samples:consumed_samples + batch_size])
        consumed_samples += batch_size
        assert tokens_after == consumed_tokens  # the step's real input tokens
        assert lr == pytest.approx(_formula(consumed_tokens, PEAK, FLOOR, TOKENS, WARMUP, ANNEAL, "minus_sqrt"),
                                   rel=1e-12)
    assert len(builds) >= 2, builds  # the straight run grew its split
    assert len(first) == N and first + second == straight  # bit-exact: ==, not approx
