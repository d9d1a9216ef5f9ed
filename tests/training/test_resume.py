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
from tests.training.training_data import SPECIAL, base_args, write_corpus

N = 3


class _Killed(Exception):
    pass


def _run(prefix, **overrides):
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    args = make_arguments(**base_args(prefix, attention_output_dropout=0.1, lr_warmup_iters=2 * N, **overrides))
    return [(r["loss"], r["grad_norm"], r["lr"]) for r in pretrain(args, special_tokens=SPECIAL) if "loss" in r]


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
    sizes = [r["batch_size"] for r in pretrain(ramp, special_tokens=SPECIAL) if "loss" in r]
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
