"""From scratch, TP=2 (with and without sequence parallelism), PP=2, PP=2 x VPP=2 and DP=2 (distributed
optimizer) log the single-rank losses, float32, with AdamW and with StableAdamW; TP=2 with sequence
parallelism does so for every data layout and objective; a single-rank training checkpoint resumes at
another layout (optimizer state resharded: AdamW's at TP=2, StableAdamW's over the distributed
optimizer's DP shards) on the same losses.

The runs take their token ids from a tokenizer.json, as users' runs do (sequence parallelism pads a
micro-batch with the run's [PAD], which must be that tokenizer's, not ModernBERT's).

Every run initialises its own weights from the same --seed (no shared starting checkpoint: the
initial weights depend on the seed and the model only, model/init.py) and reads the same samples.
Tolerance: relative 1e-6 on each of the 5 step losses: parallel runs only change float32 summation
order (TP splits matmul reductions, DP splits the token sum, PP the gradient norm's). Observed
(2 cores, torch 2.13): TP=2 4.7e-8 (steps 1-2), PP=2 2.9e-8 (step 3 only), PP=2 x VPP=2 4.6e-8 (step 5
only), DP=2 identical. Initial weights seeded per pipeline stage, tensor or data-parallel rank (as
Megatron seeds them) move every step's loss, by 2e-4 relative or more. StableAdamW clips most updates
in these runs (its clip must see whole tensors: an RMS over a TP or DP shard alone moves the losses).
"""

import re

import pytest

from tests.ranks import run_ranks
from tests.training.cli import finished, flags, step_lines, torchrun
from tests.training.training_data import base_args, write_corpus

STEPS = 5
RTOL = 1e-6
LAYOUTS = {
    "TP=2": dict(tensor_model_parallel_size=2),
    "TP=2 SP": dict(tensor_model_parallel_size=2, sequence_parallel=True),
    "PP=2": dict(pipeline_model_parallel_size=2),
    "PP=2 VPP=2": dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
    "DP=2 distributed optimizer": dict(use_distributed_optimizer=True),
}
OPTIMIZERS = {
    "adam": dict(optimizer="adam"),
    "stableadamw": dict(optimizer="stableadamw", fully_decoupled_weight_decay=True, weight_decay=0.05),
}
SAVED_WITH = {"adam": {}, "stableadamw": dict(use_distributed_optimizer=True)}
"""How the single-rank runs save: StableAdamW's under the distributed optimizer (at DP=1), whose state the
resume reshards over 2 DP ranks. (Megatron-core cannot load torch AdamW's state into the distributed
optimizer: checkpointing.py refuses that resume.)"""
RESUME_AT = {"adam": "TP=2", "stableadamw": "DP=2 distributed optimizer"}
SP = dict(tensor_model_parallel_size=2, sequence_parallel=True)
DATA = [dict(data_layout=layout, objective=objective)
        for layout in ("document", "packed", "concat") for objective in ("mlm", "clm")]
pytestmark = pytest.mark.timeout(600)  # covers the module fixtures' runs, set up by the first test


def _losses(history):
    """(losses, input tokens consumed after each step): the tokens must match exactly."""
    rows = [row for row in history if "loss" in row]
    return [row["loss"] for row in rows], [row["tokens"] for row in rows]


def _train(rank, data, overrides):
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    values = {"train_iters": STEPS, **overrides}
    return _losses(pretrain(make_arguments(**base_args(data, **values))))


def _parallel(rank, data, saved):
    results = {}
    for optimizer, settings in OPTIMIZERS.items():
        for name, layout in LAYOUTS.items():
            results[optimizer, name] = _train(rank, data, {**settings, **layout})
        # The single-rank run's step-5 checkpoint (optimizer, schedule, data position) at another layout.
        results[optimizer, "resume"] = _train(rank, data, dict(
            **settings, **LAYOUTS[RESUME_AT[optimizer]], load=f"{saved[optimizer]}/iter_{STEPS:07d}",
            train_iters=STEPS + 2))
    results["SP"] = [_train(rank, data, {**case, **SP}) for case in DATA]
    return results


def _references(rank, data, saved):
    """Each optimizer's single-rank run (2 steps longer than the layouts', saved after step 5), then one run
    per DATA case."""
    runs = {optimizer: _train(rank, data, dict(**settings, **SAVED_WITH[optimizer], train_iters=STEPS + 2,
                                                save=saved[optimizer], save_interval=STEPS))
            for optimizer, settings in OPTIMIZERS.items()}
    return runs, [_train(rank, data, case) for case in DATA]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-rank runs from scratch: (corpus prefix, {optimizer: checkpoint directory},
    {optimizer: (losses, tokens)} of the runs the layouts repeat, [(losses, tokens)] of each DATA case)."""
    root = tmp_path_factory.mktemp("loop_parallel")
    data, saved = write_corpus(root), {name: str(root / name) for name in OPTIMIZERS}
    ((runs, cases),) = run_ranks(1, _references, data, saved)
    for losses, _ in runs.values():
        assert len(losses) == STEPS + 2 and losses[-1] < losses[0]
    return data, saved, runs, cases


@pytest.fixture(scope="module")
def parallel(reference):
    """Every layout's (losses, tokens) on each of the 2 ranks, from one 2-rank launch."""
    data, saved, _, _ = reference
    return run_ranks(2, _parallel, data, saved)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("name", LAYOUTS)
def test_from_scratch_layout_matches_single_rank(name, optimizer, reference, parallel):
    losses, tokens = reference[2][optimizer]
    for rank in range(2):  # every rank reports the global loss and token count
        got, got_tokens = parallel[rank][optimizer, name]
        assert got == pytest.approx(losses[:STEPS], rel=RTOL), f"{name} rank {rank}: {got} vs {losses}"
        assert got_tokens == tokens[:STEPS], f"{name} rank {rank}"


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_single_rank_checkpoint_resumes_at_another_layout(optimizer, reference, parallel):
    losses, tokens = reference[2][optimizer]
    for rank in range(2):
        got, got_tokens = parallel[rank][optimizer, "resume"]
        assert got == pytest.approx(losses[STEPS:], rel=RTOL), f"resume rank {rank}: {got} vs {losses}"
        assert got_tokens == tokens[STEPS:], f"resume rank {rank}"


@pytest.mark.parametrize("case", range(len(DATA)), ids=[f"{c['data_layout']}-{c['objective']}" for c in DATA])
def test_sequence_parallel_matches_single_rank_for_every_layout_and_objective(case, reference, parallel):
    losses, tokens = reference[3][case]
    for rank in range(2):
        got, got_tokens = parallel[rank]["SP"][case]
        assert got == pytest.approx(losses, rel=RTOL), f"{DATA[case]} rank {rank}: {got} vs {losses}"
        assert got_tokens == tokens, f"{DATA[case]} rank {rank}"


def test_cli_tp2_with_sequence_parallel_logs_the_single_process_losses(tmp_path):
    """The user's path: ``torchrun -m ettin_megatron.pretrain --tokenizer-model ...`` at TP=2 with
    --sequence-parallel logs the losses, learning rates and gradient norms of one process."""
    values = base_args(write_corpus(tmp_path),
                       train_iters=STEPS)
    single = _printed(finished(torchrun(flags(**values), nproc=1)))
    parallel = _printed(finished(torchrun(flags(**values, tensor_model_parallel_size=2, sequence_parallel=True))))
    assert len(single) == STEPS and parallel.keys() == single.keys()
    for step, (loss, lr, grad_norm) in single.items():  # equal to the last printed digit (rounding may flip it)
        got_loss, got_lr, got_grad_norm = parallel[step]
        assert (got_loss, got_lr, got_grad_norm) == (pytest.approx(loss, abs=1.01e-4), lr,
                                                     pytest.approx(grad_norm, abs=1.01e-3)), f"step {step}"


def _printed(log: str) -> dict:
    """{step: (loss, lr, grad norm)} as the log prints them."""
    return {step: tuple(float(number) for number in re.findall(r"(?:loss|lr|norm) (\S+)", line))
            for step, line in step_lines(log).items()}
