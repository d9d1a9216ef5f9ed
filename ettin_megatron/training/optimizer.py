"""The optimizer and the learning-rate schedule, both Megatron-Core's.

Optimizer: ``get_megatron_optimizer`` with Adam in decoupled (AdamW) mode; megatron's standard
parameter groups already exempt norms (1-D) and biases from weight decay, as Ettin does. With
``--bf16`` it keeps fp32 main weights; with ``--use-distributed-optimizer`` it shards them over DP.

Ettin trained with StableAdamW (AdamW with a per-tensor update clip that replaces gradient clipping).
Megatron-Core 0.16 builds its inner optimizer itself from ``config.optimizer`` in {adam, sgd} (and,
for the distributed optimizer, from the shards of its own contiguous buffers), so a different update
rule cannot be plugged in without patching megatron. We keep megatron's AdamW and keep gradient
clipping on (``--clip-grad 1.0``) in its place.

Schedule: ``OptimizerParamScheduler`` stepped in *samples*, as Megatron-LM does (so a batch-size
ramp-up does not distort it), or, in a ``--train-tokens`` run, in *input tokens*: each step advances it
by the step's real token count (every non-padding token the model reads, summed over the global
batch), not its labelled tokens. Ettin's budgets (phase lengths, warm-ups) count input tokens, as
Composer's token counter did, and the labelled share depends on the objective (~30% under MLM, almost
all under CLM), so one recipe means the same data for encoder and decoder only in input tokens.
The scheduler takes Python ints, so 2e12 tokens are exact, and its ratios are float64 divisions of
integers below 2**53: the formulas hold at token granularity. Linear warmup from ``--lr-warmup-init`` to ``--lr``, then ``constant``
(Ettin phase 1, warmup-stable), or ``WSD`` whose last ``wsd`` samples anneal to ``--min-lr`` with
``--lr-wsd-decay-style minus_sqrt``: lr = min + (peak - min)(1 - sqrt((n - (T - C)) / C)), which is
the recipe's peak * (a + (1 - a)(1 - sqrt(...))) with a = min / peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from .arguments import Arguments


def build_optimizer(args: Arguments, model_chunks):
    """Megatron's (mixed-precision / distributed) AdamW over the model chunks."""
    o = args.optim
    config = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
        decoupled_weight_decay=True, bf16=args.run.bf16,
        params_dtype=torch.bfloat16 if args.run.bf16 else torch.float32,
        use_distributed_optimizer=args.parallel.use_distributed_optimizer,
    )
    return get_megatron_optimizer(config, model_chunks)


@dataclass(frozen=True)
class ScheduleSteps:
    """The schedule's lengths in the run's unit: samples (Megatron-LM's), or input tokens in a
    --train-tokens run."""

    warmup: int
    decay: int
    wsd_decay: int


def schedule_steps(args: Arguments) -> ScheduleSteps:
    """Warmup / decay / WSD-anneal lengths in the run's unit. In a --train-tokens run each is its
    *-tokens flag; otherwise its *-samples flag or its *-iters flag (steps x the global batch;
    validate refuses both), whichever way the run's own length is given; the warmup also as
    --lr-warmup-fraction of the decay (Megatron-LM's). Decay defaults to the whole
    run and the WSD anneal to the whole decay."""
    o, r, gbs = args.optim, args.run, args.data.global_batch_size
    if r.train_tokens is not None:
        run, warmup, decay, wsd = r.train_tokens, o.lr_warmup_tokens, o.lr_decay_tokens, o.lr_wsd_decay_tokens
    else:
        run = r.train_samples if r.train_samples is not None else r.train_iters * gbs
        warmup = o.lr_warmup_samples or o.lr_warmup_iters * gbs
        decay = o.lr_decay_samples or (o.lr_decay_iters or 0) * gbs
        wsd = o.lr_wsd_decay_samples or (o.lr_wsd_decay_iters or 0) * gbs
    decay = decay or run
    if o.lr_warmup_fraction is not None:
        warmup = int(o.lr_warmup_fraction * decay)
    wsd = wsd or decay
    decay = max(decay, warmup + 1)  # megatron asserts warmup < decay (irrelevant for constant)
    return ScheduleSteps(warmup=warmup, decay=decay, wsd_decay=min(wsd, decay))


def build_scheduler(args: Arguments, optimizer) -> OptimizerParamScheduler:
    """Megatron's scheduler for this run; weight decay is constant."""
    o, steps = args.optim, schedule_steps(args)
    return OptimizerParamScheduler(
        optimizer, init_lr=o.lr_warmup_init, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=steps.warmup, lr_decay_steps=steps.decay, lr_decay_style=o.lr_decay_style,
        start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=steps.decay, wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=args.run.use_checkpoint_opt_param_scheduler,
        override_opt_param_scheduler=args.run.override_opt_param_scheduler,
        wsd_decay_steps=steps.wsd_decay, lr_wsd_decay_style=o.lr_wsd_decay_style,
    )


WSD_FIELDS = ("wsd_decay_steps", "lr_wsd_decay_style")
"""Schedule fields megatron's scheduler.state_dict leaves out; checkpoints keep them beside it."""


def schedule_state(scheduler: OptimizerParamScheduler) -> dict:
    """What a checkpoint stores of the schedule: megatron's state_dict plus the WSD anneal."""
    return {**scheduler.state_dict(), **{name: getattr(scheduler, name) for name in WSD_FIELDS}}


def planned_schedule(args: Arguments) -> dict:
    """schedule_state of the scheduler this run builds, without an optimizer (none exists yet when
    check_load compares it with a checkpoint's)."""
    class _NoParams:
        param_groups: list = []

    return schedule_state(build_scheduler(args, _NoParams()))


def load_schedule(scheduler: OptimizerParamScheduler, state: dict) -> None:
    """Megatron's load_state_dict, with the WSD fields taken from the checkpoint too when its schedule
    wins (--use-checkpoint-opt_param-scheduler)."""
    if scheduler.use_checkpoint_opt_param_scheduler and not scheduler.override_opt_param_scheduler:
        for name in WSD_FIELDS:
            if name in state:
                setattr(scheduler, name, state[name])
    scheduler.load_state_dict(state)


def current_lr(optimizer) -> float:
    """The LR of the first parameter group that decays (the one the schedule describes)."""
    for group in optimizer.param_groups:
        if group.get("wd_mult", 1.0) != 0.0:
            return group["lr"]
    return optimizer.param_groups[0]["lr"]
