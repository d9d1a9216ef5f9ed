"""TP=2, PP=2, PP=2 x VPP=2 and DP=2 (distributed optimizer) give the single-rank losses, float32;
a single-rank training checkpoint resumes at TP=2 (optimizer state resharded) on the same losses.

All runs start from the same weights (a checkpoint written by the single-rank process, loaded with
--finetune, which reshards it) and read the same samples. Tolerance: relative 1e-6 on each of the 5
step losses: parallel runs only change float32 summation order (TP splits matmul reductions, DP
splits the token sum). Observed (2 cores, torch 2.13): TP=2 and PP=2 x VPP=2 identical, PP=2
1.6e-7, DP=2 1.2e-7.
"""

import pytest

from ettin_megatron.checkpoint import save_checkpoint
from tests.ranks import run_ranks
from tests.training.training_data import SPECIAL, base_args, write_corpus

STEPS = 5
RTOL = 1e-6
LAYOUTS = {
    "TP=2": dict(tensor_model_parallel_size=2),
    "PP=2": dict(pipeline_model_parallel_size=2),
    "PP=2 VPP=2": dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
    "DP=2 distributed optimizer": dict(use_distributed_optimizer=True),
}


def _losses(history):
    """(losses, input tokens consumed after each step): the tokens must match exactly."""
    rows = [row for row in history if "loss" in row]
    return [row["loss"] for row in rows], [row["tokens"] for row in rows]


def _train(prefix, init, **overrides):
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    values = dict(train_iters=STEPS, load=init, finetune=True)
    values.update(overrides)
    return _losses(pretrain(make_arguments(**base_args(prefix, **values)), special_tokens=SPECIAL))


def _reference(rank, prefix, init):
    """Single rank: write the shared initial weights, then train from them."""
    from ettin_megatron.runtime import ParallelLayout, initialize
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.setup import build_model, build_model_config, unwrap

    args = make_arguments(**base_args(prefix))
    initialize(ParallelLayout(), seed=7)
    config = build_model_config(args)
    save_checkpoint(init, 0, unwrap(build_model(args, config)), config)
    # Two more steps, with a full training checkpoint after step 5 for the cross-layout resume.
    return _train(prefix, init, train_iters=STEPS + 2, save=init + "-run", save_interval=STEPS)


def _parallel(rank, prefix, init):
    results = {name: _train(prefix, init, **layout) for name, layout in LAYOUTS.items()}
    # Resume the single-rank run's step-5 checkpoint (optimizer, schedule, data position) at TP=2.
    results["resume at TP=2"] = _train(prefix, f"{init}-run/iter_{STEPS:07d}", finetune=False,
                                       train_iters=STEPS + 2, tensor_model_parallel_size=2)
    return results


@pytest.mark.timeout(600)
def test_parallel_layouts_match_single_rank(tmp_path):
    prefix = write_corpus(tmp_path)
    init = str(tmp_path / "init")
    ((reference, tokens),) = run_ranks(1, _reference, prefix, init)
    assert len(reference) == STEPS + 2 and reference[-1] < reference[0]
    results = run_ranks(2, _parallel, prefix, init)
    for name in LAYOUTS:
        for rank in range(2):  # every rank reports the global loss and token count
            got, got_tokens = results[rank][name]
            assert got == pytest.approx(reference[:STEPS], rel=RTOL), f"{name} rank {rank}: {got} vs {reference}"
            assert got_tokens == tokens[:STEPS], f"{name} rank {rank}"
    for rank in range(2):
        got, got_tokens = results[rank]["resume at TP=2"]
        assert got == pytest.approx(reference[STEPS:], rel=RTOL), f"resume rank {rank}: {got} vs {reference}"
        assert got_tokens == tokens[STEPS:], f"resume rank {rank}"
