"""StableAdamW against its reference, torch-optimi's (the implementation ModernBERT and Ettin trained with).

The tiny model trains 50 steps (fp32, one process, a warm-up then a WSD anneal, so lr / max_lr moves)
with --optimizer stableadamw, with and without fully decoupled weight decay. Every step's gradients and
learning rates are recorded as megatron hands them to the update rule; optimi then replays them from the
same initial weights. Both must end on the same parameters, within float32 rounding (optimi's
arithmetic is followed operation by operation, so the two agree to a few ulps). The run must clip
updates for the test to mean anything about the clip, and it does (checked).
"""

import pytest
import torch

from tests.ranks import run_ranks
from tests.training.training_data import base_args, write_corpus

STEPS = 50
RTOL = 1e-6
ATOL = 1e-9
"""For weights near zero, where a relative bound means nothing: 1e-7 of the init std (0.02)."""
SCHEDULE = dict(lr=3e-3, min_lr=3e-4, lr_warmup_iters=10, lr_decay_style="WSD", lr_wsd_decay_iters=20,
                lr_wsd_decay_style="minus_sqrt", weight_decay=0.05)
"""A weight decay large enough that the two decay rules part visibly within the run."""


def _run_and_replay(rank, root, decouple_lr):
    """A 50-step StableAdamW run replayed by optimi: (our final parameters, optimi's, the initial ones, each
    flattened into one tensor; the step count; the LRs seen; the largest share of clipped updates)."""
    initial, steps, final, groups, most_clipped = _record(root, decouple_lr)
    expected = _replay_with_optimi(initial, steps, groups)
    flat = [torch.cat([p.reshape(-1) for p in params]) for params in (final, expected, initial)]
    return *flat, len(steps), {lr for _, lrs in steps for lr in lrs}, most_clipped


def _record(root, decouple_lr):
    """(initial parameters, [(gradients, [lr per group])] per step, final parameters, groups' settings,
    the largest share of clipped updates in a step) of a 50-step StableAdamW run."""
    from ettin_megatron.training import stable_adamw
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    steps, initial, groups = [], [], []
    real_step = stable_adamw.StableAdamW.step

    def recording(self, closure=None):  # observes what the update rule receives, changes nothing
        params = [p for group in self.param_groups for p in group["params"]]
        if not initial:
            initial.extend(p.detach().clone() for p in params)
            groups.extend({key: group[key] for key in ("weight_decay", "betas", "eps", "max_lr", "decouple_lr")}
                          | {"size": len(group["params"])} for group in self.param_groups)
        steps.append(([p.grad.clone() for p in params], [group["lr"] for group in self.param_groups]))
        result = real_step(self, closure)
        recording.final = [p.detach().clone() for p in params]
        return result

    stable_adamw.StableAdamW.step = recording
    try:
        args = make_arguments(**base_args(write_corpus(root),
                                          optimizer="stableadamw", fully_decoupled_weight_decay=decouple_lr,
                                          train_iters=STEPS, **SCHEDULE))
        rows = [row for row in pretrain(args) if "loss" in row]
    finally:
        stable_adamw.StableAdamW.step = real_step
    return initial, steps, recording.final, groups, max(row["clipped"] for row in rows)


def _replay_with_optimi(initial, steps, groups):
    """optimi's StableAdamW (its single-tensor path) stepping on the recorded gradients and LRs."""
    from optimi import StableAdamW

    params = [torch.nn.Parameter(p.clone()) for p in initial]
    chunks, start = [], 0
    for group in groups:
        chunks.append({"params": params[start:start + group["size"]], "weight_decay": group["weight_decay"]})
        start += group["size"]
    (settings,) = {(g["betas"], g["eps"], g["max_lr"], g["decouple_lr"]) for g in groups}
    betas, eps, max_lr, decouple_lr = settings
    optimizer = StableAdamW(chunks, lr=max_lr, betas=betas, eps=eps, decouple_lr=decouple_lr, max_lr=max_lr,
                            foreach=False, triton=False)
    for grads, lrs in steps:
        for param, grad in zip(params, grads):
            param.grad = grad
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        optimizer.step()
    return [p.detach() for p in params]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("decouple_lr", [True, False], ids=["fully decoupled decay", "AdamW decay"])
def test_fifty_steps_end_on_optimis_parameters(decouple_lr, tmp_path):
    ((ours, theirs, initial, num_steps, lrs, most_clipped),) = run_ranks(1, _run_and_replay, str(tmp_path), decouple_lr,
                                                                          timeout=550)
    assert num_steps == STEPS and most_clipped > 0.2, most_clipped  # the clip acts in this run
    assert len(lrs) > 10  # warm-up and anneal: lr / max_lr moves
    assert float((theirs - initial).abs().max()) > 1e-2  # the weights moved far beyond the tolerance
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)
