"""The LR schedule is the recipe's formula, and batch-size warm-up changes the micro-batch count.

Megatron's OptimizerParamScheduler (stepped in samples, or in tokens for a token budget, as the loop
does) against closed forms:
linear warmup, warmup-stable (constant), and WSD with the 1-sqrt anneal
lr = peak * (a + (1 - a) * (1 - sqrt((n - (T - C)) / C))) over the last C of T steps.
"""

import math
import random

import pytest

from ettin_megatron.training.arguments import make_arguments, read_recipe
from ettin_megatron.training.batching import ramp_position, step_batch
from ettin_megatron.training.optimizer import build_scheduler
from ettin_megatron.training.plan import ScheduleSteps, schedule_steps

GBS = 8


class _Optimizer:
    """What the scheduler touches: param_groups."""

    def __init__(self):
        self.param_groups = [{"params": [], "wd_mult": 1.0}, {"params": [], "wd_mult": 0.0}]


def _lrs(steps, **values):
    args = make_arguments(global_batch_size=GBS, micro_batch_size=1, data_path=["x"], **values)
    optimizer = _Optimizer()
    scheduler = build_scheduler(args, schedule_steps(args), optimizer)
    out, done = {}, 0
    for n in sorted(steps):
        scheduler.step(increment=(n - done) * GBS)  # the loop steps by the global batch (samples)
        done = n
        out[n] = optimizer.param_groups[0]["lr"]
    return out


def test_linear_warmup_then_constant():
    peak, warmup = 3e-3, 10
    got = _lrs([0, 1, 5, 10, 11, 50, 100], lr=peak, lr_warmup_iters=warmup, lr_decay_style="constant",
               train_iters=100)
    for n, lr in got.items():
        assert lr == pytest.approx(peak * min(n, warmup) / warmup, rel=1e-12), n


@pytest.mark.parametrize("a", [0.5, 0.02])
def test_wsd_one_minus_sqrt(a):
    peak, T, C, warmup = 3e-3, 100, 40, 5
    steps = [3, 5, 30, 60, 61, 70, 85, 99, 100]
    got = _lrs(steps, lr=peak, min_lr=a * peak, lr_decay_style="WSD", lr_wsd_decay_style="minus_sqrt",
               lr_warmup_iters=warmup, train_iters=T, lr_wsd_decay_iters=C)
    for n, lr in got.items():
        if n <= warmup:
            expected = peak * n / warmup
        elif n <= T - C:
            expected = peak
        else:
            expected = peak * (a + (1 - a) * (1 - math.sqrt((n - (T - C)) / C)))
        assert lr == pytest.approx(expected, rel=1e-12), n


def test_recipe_phase3_decays_from_half_to_two_percent_of_peak():
    values = read_recipe("examples/recipes/encoder/150m/phase3.yaml")
    peak = 8e-4
    assert values["lr"] == pytest.approx(0.5 * peak) and values["min_lr"] == pytest.approx(0.02 * peak)
    T = 100  # the recipe's shape at a test length: 1-sqrt over the whole phase
    keep = {k: v for k, v in values.items() if k in ("lr", "min_lr", "lr_decay_style", "lr_wsd_decay_style")}
    got = _lrs([0, 25, 50, 100], train_iters=T, **keep)
    for n, lr in got.items():
        a = 0.04  # min / start = 0.02 / 0.5
        assert lr == pytest.approx(0.5 * peak * (a + (1 - a) * (1 - math.sqrt(n / T))), rel=1e-12), n


@pytest.mark.parametrize("length", [dict(train_iters=100), dict(train_samples=800)])
@pytest.mark.parametrize("decay", [dict(lr_decay_iters=50), dict(lr_decay_samples=400)])
def test_every_schedule_length_takes_either_unit_whatever_the_run_length(length, decay):
    args = make_arguments(global_batch_size=GBS, micro_batch_size=1, data_path=["x"], lr_warmup_iters=2,
                          lr_wsd_decay_samples=80, **length, **decay)
    assert schedule_steps(args) == ScheduleSteps(warmup=2 * GBS, decay=400, wsd_decay=80)
    whole_run = make_arguments(global_batch_size=GBS, micro_batch_size=1, data_path=["x"], **length)
    assert schedule_steps(whole_run).decay == 800


def test_batch_size_rampup_changes_micro_batches():
    # 16 -> 64 in steps of 16 over 96 samples; micro batch 4 x DP 2 = 8 samples per micro-batch slot.
    args = make_arguments(global_batch_size=64, micro_batch_size=4, rampup_batch_size=[16, 16, 96],
                          data_path=["x"], train_samples=1000)
    expected = {0: (2, 16), 31: (2, 16), 32: (4, 32), 64: (6, 48), 95: (6, 48), 96: (8, 64), 500: (8, 64)}
    for consumed, (num_micro, gbs) in expected.items():
        assert step_batch(args, 2, consumed) == (num_micro, gbs), consumed


def _formula(n, peak, floor, T, warmup, C, style):
    """The recipe's LR at n consumed units: linear warmup, stable, then the last C of T anneal to floor."""
    if warmup and n <= warmup:
        return peak * n / warmup
    if n > T:
        return floor
    if n <= T - C:
        return peak
    ratio = (n - (T - C)) / C
    return floor + (peak - floor) * (1 - (math.sqrt(ratio) if style == "minus_sqrt" else ratio))


@pytest.mark.parametrize("recipe", [
    # Ettin phase 2: 1-sqrt from peak to 0.5 x peak over the whole 250B tokens.
    dict(train_tokens=250_000_000_000, lr=8e-4, min_lr=4e-4, lr_wsd_decay_style="minus_sqrt"),
    # Cross-objective: 3B warm-up, linear decay to 0.02 x peak over the last 10B of 50B tokens.
    dict(train_tokens=50_000_000_000, lr=4e-4, min_lr=8e-6, lr_wsd_decay_style="linear",
         lr_warmup_tokens=3_000_000_000, lr_wsd_decay_tokens=10_000_000_000),
])
def test_token_schedule_is_the_formula_at_the_consumed_tokens(recipe):
    """Stepped by uneven real token counts (as the loop does in a --train-tokens run), the LR after each
    step is the formula evaluated at the exact number of tokens consumed, to the end of the phase."""
    args = make_arguments(global_batch_size=GBS, micro_batch_size=1, data_path=["x"], lr_decay_style="WSD",
                          **recipe)
    optimizer = _Optimizer()
    scheduler = build_scheduler(args, schedule_steps(args), optimizer)
    T, C = recipe["train_tokens"], recipe.get("lr_wsd_decay_tokens", recipe["train_tokens"])
    warmup, consumed, rng, checked = recipe.get("lr_warmup_tokens", 0), 0, random.Random(0), 0
    while consumed < T + 1_000_000_000:
        step_tokens = rng.randrange(1, 500_000_000)
        scheduler.step(increment=step_tokens)
        consumed += step_tokens
        expected = _formula(consumed, recipe["lr"], recipe["min_lr"], T, warmup, C, recipe["lr_wsd_decay_style"])
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-18), consumed
        checked += 1
    assert scheduler.num_steps == consumed and checked > 150


def test_batch_size_rampup_in_tokens_follows_the_consumed_tokens():
    # 16 -> 64 in steps of 16 over 96,000 tokens (32,000 per increment); micro batch 4 x DP 2.
    args = make_arguments(global_batch_size=64, micro_batch_size=4, rampup_batch_size_tokens=[16, 16, 96_000],
                          data_path=["x"], train_tokens=10**6)
    expected = {0: (2, 16), 31_999: (2, 16), 32_000: (4, 32), 64_000: (6, 48), 95_999: (6, 48),
                96_000: (8, 64), 500_000: (8, 64)}
    for tokens, (num_micro, gbs) in expected.items():
        position = ramp_position(args, consumed_samples=7, consumed_tokens=tokens)  # samples play no part
        assert step_batch(args, 2, position) == (num_micro, gbs), tokens
