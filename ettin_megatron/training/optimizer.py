"""The optimizer and the learning-rate schedule, both Megatron-Core's.

Optimizer: ``get_megatron_optimizer``, with its fp32 main weights under ``--bf16`` and its sharding over
DP under ``--use-distributed-optimizer``; megatron's standard parameter groups exempt norms (1-D) and
biases from weight decay, as Ettin does. Its update rule is AdamW (``--optimizer adam``) or Ettin's
StableAdamW (``--optimizer stableadamw``, stable_adamw.py), which megatron cannot build itself:
it replaces the inner AdamW that megatron wraps.

Weight decay: AdamW applies p <- p (1 - lr x wd). Ettin's ``weight_decay`` is fully decoupled
(``--fully-decoupled-weight-decay``): p <- p (1 - wd x lr / max_lr), max_lr = ``--lr``. StableAdamW
applies either rule itself; AdamW gets the second as its own rule with wd / max_lr.

Gradient clipping (``--clip-grad``, 1.0 with adam, none with stableadamw) is megatron's. The gradient
norm is measured and logged in either case.

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

import torch
from megatron.core import optimizer as megatron_optimizers
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from .arguments import Arguments
from .plan import ScheduleSteps
from .stable_adamw import use_stable_adamw, wrappers


def clip_grad(args: Arguments) -> float:
    """The global gradient-norm clip: --clip-grad, by default 1.0 with adam and none with stableadamw."""
    if args.optim.clip_grad is not None:
        return args.optim.clip_grad
    return 0.0 if args.optim.optimizer == "stableadamw" else 1.0


def weight_decay(args: Arguments) -> float:
    """The weight decay the optimizer is given: AdamW's coefficient of lr, which for fully decoupled decay
    under adam is wd / max_lr (StableAdamW applies the rule itself)."""
    o = args.optim
    if o.fully_decoupled_weight_decay and o.optimizer == "adam":
        return o.weight_decay / o.lr
    return o.weight_decay


def build_optimizer(args: Arguments, model_chunks):
    """Megatron's (mixed-precision / distributed) optimizer over the model chunks, stepping with AdamW or
    StableAdamW."""
    o, distributed = args.optim, args.parallel.use_distributed_optimizer
    config = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=weight_decay(args),
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=clip_grad(args),
        decoupled_weight_decay=True, bf16=args.run.bf16,
        params_dtype=torch.bfloat16 if args.run.bf16 else torch.float32,
        use_distributed_optimizer=distributed,
    )
    optimizer = get_megatron_optimizer(config, model_chunks)
    if o.optimizer == "stableadamw":
        use_stable_adamw(optimizer, model_chunks, max_lr=o.lr, decouple_lr=o.fully_decoupled_weight_decay,
                         distributed=distributed)
    return optimizer


def optimizer_record(args: Arguments) -> dict:
    """What a checkpoint records of its optimizer, which a resume must keep: the moments mean other things
    under another rule, and the distributed optimizer lays its state out its own way."""
    return {"optimizer": args.optim.optimizer, "fully_decoupled_weight_decay": args.optim.fully_decoupled_weight_decay,
            "use_distributed_optimizer": args.parallel.use_distributed_optimizer}


def fused_adam_available() -> bool:
    """Whether megatron's AdamW is Transformer Engine's or apex's FusedAdam rather than torch's."""
    return not megatron_optimizers.USING_PYTORCH_OPTIMIZER


def create_state(optimizer) -> None:
    """Give every parameter the moments a checkpoint is loaded into, where it has none yet (zeros): the
    distributed optimizer reads that state before it loads, and a fresh one has none."""
    for wrapper in wrappers(optimizer):
        inner = wrapper.optimizer
        for param in (p for group in getattr(inner, "param_groups", []) for p in group["params"]):
            state = inner.state[param]
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment not in state:
                    state[moment] = torch.zeros_like(param)


def optimizer_step(optimizer) -> tuple[bool, float | None]:
    """Megatron's optimizer step: (whether the parameters were updated, the gradient norm). Megatron
    measures the norm only to clip with it; without a clip it is measured here, the same way."""
    if optimizer.config.clip_grad > 0:
        updated, grad_norm, _ = optimizer.step()
        return updated, grad_norm
    if optimizer.prepare_grads():  # non-finite gradients: a loss scaler skips the step
        return False, None
    grad_norm = optimizer.get_grad_norm()
    return optimizer.step_with_ready_grads(), grad_norm


def build_scheduler(args: Arguments, steps: ScheduleSteps, optimizer) -> OptimizerParamScheduler:
    """Megatron's scheduler for a run of ``args`` whose lengths are ``steps`` (the plan's); weight decay is
    constant."""
    o = args.optim
    return OptimizerParamScheduler(
        optimizer, init_lr=o.lr_warmup_init, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=steps.warmup, lr_decay_steps=steps.decay, lr_decay_style=o.lr_decay_style,
        start_wd=weight_decay(args), end_wd=weight_decay(args), wd_incr_steps=steps.decay, wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=args.run.use_checkpoint_opt_param_scheduler,
        override_opt_param_scheduler=args.run.override_opt_param_scheduler,
        wsd_decay_steps=steps.wsd_decay, lr_wsd_decay_style=o.lr_wsd_decay_style,
    )


WSD_FIELDS = ("wsd_decay_steps", "lr_wsd_decay_style")
"""Schedule fields megatron's scheduler.state_dict leaves out; checkpoints keep them beside it."""


def schedule_state(scheduler: OptimizerParamScheduler) -> dict:
    """What a checkpoint stores of the schedule: megatron's state_dict plus the WSD anneal."""
    return {**scheduler.state_dict(), **{name: getattr(scheduler, name) for name in WSD_FIELDS}}


def planned_schedule(args: Arguments, steps: ScheduleSteps) -> dict:
    """schedule_state of the scheduler a run builds, without an optimizer (none exists yet when
    check_load compares it with a checkpoint's)."""
    class _NoParams:
        param_groups: list = []

    return schedule_state(build_scheduler(args, steps, _NoParams()))


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
