"""The training loop: read it top to bottom.

    pretrain(args)
      plan the run                                plan.py: everything checked and resolved once (before
                                                  any process group or compute), then the --load
                                                  checkpoint checked (checkpointing.py)
      setup                                       process groups and seeds (runtime.initialize), model
                                                  chunks in DDP, optimizer, schedule (setup.py,
                                                  optimizer.py), --load, datasets (batching.py:
                                                  EttinDataset on megatron's builder)
      for each step, until the iteration, sample or token budget is reached:
          train_step                              this step's micro-batches (data_loader.py), forward +
                                                  backward (megatron's 1F1B / interleaved schedule),
                                                  non-finite guard (stopping.py), optimizer and LR step
                                                  (by samples, or by the step's input tokens in a
                                                  --train-tokens run)
          log / evaluate / save                   metrics.py, evaluate, checkpointing.py
          a signal or the time limit?             stopping.py: save and stop, the same step on every rank

Everything that runs is Megatron-Core's; this file only orders the calls. ``pretrain`` returns the
history of logged rows (what tests compare).
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from megatron.core import parallel_state
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func

from ..checkpoint import iteration_dir, latest_iteration
from ..config import EttinConfig, model_fields
from ..errors import Interrupted
from ..model.counts import count_parameters
from ..runtime import ParallelLayout, device, initialize, report
from . import batching, checkpointing
from .arguments import Arguments
from .data_loader import MicroBatchSampler, micro_batch_loader, step_iterators
from .forward_step import EvalReport, TrainReport, make_forward_step, sum_reports
from .metrics import Metrics, scalar_writers
from .optimizer import build_optimizer, build_scheduler, current_lr, optimizer_step
from .plan import RunPlan, describe_schedule, plan_run
from .setup import build_model, build_model_config, wire_schedule_hooks
from .stable_adamw import clipped_fraction
from .stopping import ExitConditions, check_finite, nonfinite_flags, stop_with_launcher


@dataclass
class Run:
    """What a training run holds once it is set up: its plan, the parallel model, its optimizer and
    schedule, the data, and where this rank sits in the data-parallel group."""

    plan: RunPlan
    config: EttinConfig
    model: list[torch.nn.Module]
    """This rank's model chunks (one per virtual pipeline stage), each in Megatron's DDP."""
    optimizer: MegatronOptimizer
    scheduler: OptimizerParamScheduler
    train_ds: torch.utils.data.Dataset
    valid_ds: torch.utils.data.Dataset | None
    eval_batches: int
    dp_rank: int
    metrics: Metrics
    train_batches: Iterator[dict] | None = None
    """This rank's training micro-batches from the data position on (data_loader.py)."""
    forward_backward: Callable = field(default_factory=get_forward_backward_func)

    def __post_init__(self):
        self.train_forward = make_forward_step(device(), self.config)
        self.eval_forward = make_forward_step(device(), self.config, evaluation=True)

    @property
    def args(self) -> Arguments:
        return self.plan.args

    @property
    def dp_size(self) -> int:
        return self.plan.data_parallel_size


def every(interval: int | None, step: int) -> bool:
    """Whether ``step`` falls on ``interval`` (never when it is 0 or None): the cadence of logging,
    validation, saving and --exit-interval, as in Megatron-LM."""
    return bool(interval) and step % interval == 0


def pretrain(args: Arguments) -> list[dict]:
    """Train as ``args`` say; returns one row per step (loss, lr, grad norm, ...) and validation rows."""
    start_time = time.time()  # --exit-duration-in-mins counts from here
    plan = plan_run(args, int(os.environ.get("WORLD_SIZE", "1")))  # torchrun's; the process group comes later
    # The shapes only: the model's own config is built after initialize, whose CPU emulation it reads.
    try:
        resume = checkpointing.check_load(plan, model_fields(build_model_config(plan.model)))
    except checkpointing.RunFinished as finished:
        if not args.run.validate_only:  # the run itself says so
            report(str(finished))
        return []
    if args.run.validate_only:
        return []

    # Before setup: its loader workers, forked, inherit the handler, which ignores signals there.
    exit_conditions = ExitConditions(args.run, start_time)
    stop_with_launcher()
    try:
        run, iteration, consumed, tokens = setup(plan, resume)
        return _train(run, iteration, consumed, tokens, exit_conditions)
    except KeyboardInterrupt:  # only without --exit-signal-handler, whose handler takes SIGINT
        raise Interrupted(_interrupted(args)) from None
    finally:
        exit_conditions.close()


def _interrupted(args: Arguments) -> str:
    """What a user who pressed Ctrl-C needs to know: what was kept, and how to keep the step next time."""
    latest = latest_iteration(args.run.save) if args.run.save else None
    kept = (f"the last checkpoint is {iteration_dir(args.run.save, latest)}, where a rerun resumes" if latest
            else "nothing was saved")
    return f"interrupted: {kept}; --exit-signal-handler makes Ctrl-C save the step before it stops."


def _train(run: Run, iteration: int, consumed: int, tokens: int, exit_conditions: ExitConditions) -> list[dict]:
    """Steps until the end, --exit-interval, a signal or the time limit; the history of logged rows."""
    plan, r = run.plan, run.args.run
    history, stop = [], None
    start, start_iteration, start_tokens = time.time(), iteration, tokens
    while not plan.reached_end(iteration, consumed, tokens):
        batch_size, step_tokens, loss, grad_norm = train_step(run, iteration + 1, consumed, tokens)
        iteration += 1
        consumed += batch_size
        tokens += step_tokens
        done = plan.reached_end(iteration, consumed, tokens)

        # Report, validate, save.
        row = {"step": iteration, "loss": loss, "lr": current_lr(run.optimizer), "grad_norm": grad_norm,
               "batch_size": batch_size, "tokens": tokens}
        if iteration == 1 or every(r.log_interval, iteration) or done:
            clipped = clipped_fraction(run.optimizer)  # StableAdamW's; read on logged steps only
            row = run.metrics.log_step(iteration, consumed, tokens, loss, row["lr"], grad_norm, batch_size,
                                       None if clipped is None else clipped.item())
        history.append(row)
        if every(r.eval_interval, iteration) and run.eval_batches:
            history.append(evaluate(run, iteration))
        exiting = every(r.exit_interval, iteration)
        stop = None if done else exit_conditions.reason()
        if r.save and (exiting or stop or every(r.save_interval, iteration)):
            _save(run, iteration, consumed, tokens)
        if stop:
            saved = ", saved; relaunch the same command to resume." if r.save else " (no --save: nothing saved)."
            report(f"{stop}: stopped after step {iteration}{saved}")
        if exiting or stop:
            break

    if not stop and not every(r.exit_interval, iteration):  # the run's end: validate and save it once
        if run.eval_batches and not every(r.eval_interval, iteration):
            history.append(evaluate(run, iteration))
        if r.save and not every(r.save_interval, iteration):
            _save(run, iteration, consumed, tokens)
    seconds = time.time() - start
    report(f"summary: step {iteration}, {tokens:,} tokens in all; this launch trained {iteration - start_iteration} "
           f"steps, {tokens - start_tokens:,} tokens in {datetime.timedelta(seconds=round(seconds))} "
           f"({(tokens - start_tokens) / max(seconds, 1e-9):,.0f} tokens/s).")
    run.metrics.close()
    return history


def setup(plan: RunPlan, resume) -> tuple[Run, int, int, int]:
    """Process groups, model chunks in DDP, optimizer, schedule, the --load checkpoint and the datasets;
    returns the run and where it starts (step, consumed samples, consumed tokens)."""
    args = plan.args
    layout = ParallelLayout(args.parallel.tensor_model_parallel_size, args.parallel.pipeline_model_parallel_size,
                            plan.model.virtual_pipeline_size)
    initialize(layout, seed=args.run.seed)
    config = build_model_config(plan.model)
    model = build_model(args, config)
    optimizer = build_optimizer(args, model)
    scheduler = build_scheduler(args, plan.schedule, optimizer)
    wire_schedule_hooks(config, model, optimizer, args)

    iteration, consumed, tokens = 0, 0, 0
    if resume:
        iteration, consumed, tokens = checkpointing.load(resume, model, optimizer, scheduler, args.run.finetune)
        report(f"loaded {args.run.load}: continuing at step {iteration}, {consumed:,} samples / {tokens:,} tokens "
               "consumed")
    elif args.run.load:
        report(f"no checkpoint in {args.run.load} yet: starting from scratch")

    # Every rank reads data (pipeline stages all need the packing boundaries).
    gbs, eval_batches = args.data.global_batch_size, args.run.eval_iters
    train_ds, valid_ds = batching.run_datasets(plan, batching.planned_samples(args), eval_batches * gbs)
    if valid_ds is None:
        eval_batches = 0  # the split leaves no validation documents
    params = count_parameters(config)
    metrics = Metrics(scalar_writers(args), args.run.train_iters, args.run.train_samples, args.run.train_tokens,
                      config, params, torch.distributed.get_world_size(), args.model.objective)
    run = Run(plan, config, model, optimizer, scheduler, train_ds, valid_ds, eval_batches,
              parallel_state.get_data_parallel_rank(), metrics)
    if args.run.train_tokens is not None:
        grow_train_data(run, consumed, tokens, 0)
    run.train_batches = iter(_loader(run, run.train_ds, consumed))
    report(f"model {args.model.model_size} ({args.model.objective}): {params / 1e6:.1f}M parameters, "
           f"TP={layout.tensor_parallel} PP={layout.pipeline_parallel} VPP={layout.virtual_pipeline_parallel} "
           f"DP={plan.data_parallel_size}")
    report(describe_schedule(args, plan.schedule))
    return run, iteration, consumed, tokens


def grow_train_data(run: Run, consumed: int, tokens: int, batch_size: int) -> None:
    """Make the train split hold what a --train-tokens run reads: the next ``batch_size`` samples and the
    rest of the budget (batching.token_budget_samples). Asking for more samples only appends to the
    sample index, so the samples read so far and their order are unchanged (resume stays exact). Every
    rank decides alike from the same counts, so the rebuild (a collective) happens on all of them."""
    args, have = run.args, len(run.train_ds)
    need = max(consumed + batch_size, batching.token_budget_samples(args, run.train_ds, consumed, tokens))
    if need > have:
        report(f"the token budget needs about {need:,} train samples, {have:,} built: building them")
        run.train_ds, run.valid_ds = batching.run_datasets(run.plan, need, run.eval_batches * args.data.global_batch_size)
        if run.train_batches is not None:  # read on from here in the grown split (same samples, more of them)
            run.train_batches = iter(_loader(run, run.train_ds, consumed))


def train_step(run: Run, step: int, consumed: int, tokens: int) -> tuple[int, int, float, float | None]:
    """Optimizer step ``step`` on the global batch at sample ``consumed`` (``tokens`` input tokens read
    before it): (batch size, its input tokens, loss, grad norm).

    Megatron's pipeline schedule (1F1B / interleaved) runs forward + backward over the micro-batches;
    the non-finite guard (stopping.py) may stop the run there; then Megatron's optimizer steps
    (skipping the step when the loss scaler finds overflows) and the scheduler advances by the batch's
    samples, or in a --train-tokens run by its input tokens (see optimizer.py)."""
    num_micro, batch_size = batching.step_batch(run.args, run.dp_size, batching.ramp_position(run.args, consumed, tokens))
    if run.args.run.train_tokens is not None and consumed + batch_size > len(run.train_ds):
        grow_train_data(run, consumed, tokens, batch_size)  # the estimate fell short
    for chunk in run.model:
        chunk.zero_grad_buffer()
    run.optimizer.zero_grad()
    reports = run.forward_backward(
        forward_step_func=run.train_forward, data_iterator=step_iterators(run.train_batches, num_micro, len(run.model)),
        model=run.model, num_microbatches=num_micro, seq_length=run.args.data.seq_length, micro_batch_size=1,
        forward_only=False)
    values = _share(sum_reports(reports, TrainReport))
    guard = run.args.run.check_for_nan_in_loss_and_grad
    if guard:  # its flags ride along in the step's one host read
        values = torch.cat([values, nonfinite_flags(run, consumed, reports)])
    values = values.tolist()
    report, flags = TrainReport(*values[:len(TrainReport._fields)]), values[len(TrainReport._fields):]
    loss = report.loss_sum / max(report.labelled, 1)
    if guard:
        check_finite(run, step, consumed, loss, *flags)
    input_tokens = round(report.input_tokens)
    updated, grad_norm = optimizer_step(run.optimizer)
    if updated:
        run.scheduler.step(increment=input_tokens if run.args.run.train_tokens is not None else batch_size)
    run.metrics.add_tokens(input_tokens, report.pairs)
    return batch_size, input_tokens, loss, None if grad_norm is None else float(grad_norm)


def evaluate(run: Run, step: int) -> dict:
    """Loss and accuracy on the same first ``eval_iters`` global batches of the valid split every time."""
    gbs = run.args.data.global_batch_size
    num_micro = gbs // (run.args.data.micro_batch_size * run.dp_size)
    batches = iter(_loader(run, run.valid_ds, 0, run.eval_batches * num_micro))
    report = validation_report(run.model, run.eval_forward, batches, run.eval_batches, num_micro,
                               run.args.data.seq_length, run.forward_backward)
    labelled = max(report.labelled, 1)
    return run.metrics.log_validation(step, report.loss_sum / labelled, report.correct / labelled,
                                      int(report.labelled))


def validation_report(model: list[torch.nn.Module], forward_step: Callable, batches: Iterator[dict], steps: int,
                      num_micro: int, seq_length: int, forward_backward: Callable | None = None) -> EvalReport:
    """The EvalReport (loss sum, labelled and correct tokens) of ``steps`` forward-only passes of Megatron's
    schedule over ``num_micro`` micro-batches each of ``batches``, in eval mode, summed over the
    data-parallel ranks. The loop's validation, and the held-out evaluation of saved checkpoints
    (evaluation/heldout.py), which thereby scores exactly as the run logged."""
    forward_backward = forward_backward or get_forward_backward_func()
    modes = [chunk.training for chunk in model]
    for chunk in model:
        chunk.eval()
    totals = torch.zeros(len(EvalReport._fields), dtype=torch.float64, device=device())
    with torch.no_grad():
        for _ in range(steps):
            reports = forward_backward(
                forward_step_func=forward_step, data_iterator=step_iterators(batches, num_micro, len(model)),
                model=model, num_microbatches=num_micro, seq_length=seq_length, micro_batch_size=1,
                forward_only=True)
            totals += sum_reports(reports, EvalReport)
    for chunk, mode in zip(model, modes):
        chunk.train(mode)
    return EvalReport(*_share(totals).tolist())


def _save(run: Run, iteration: int, consumed: int, tokens: int) -> None:
    path = checkpointing.save(run.args.run.save, iteration, consumed, tokens, run.model, run.optimizer,
                              run.scheduler, run.config, run.plan)
    report(f"saved checkpoint {path}")


def _share(values: torch.Tensor) -> torch.Tensor:
    """Sum over DP ranks on the last pipeline stage and share it with every stage, on the device."""
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        torch.distributed.all_reduce(values, group=parallel_state.get_data_parallel_group())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(values, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                    group=parallel_state.get_pipeline_model_parallel_group())
    return values


def _loader(run: Run, dataset, start: int, count: int | None = None):
    """This rank's micro-batches of ``dataset`` from sample ``start`` (data_loader.py)."""
    pad = run.args.parallel.tensor_model_parallel_size if run.config.sequence_parallel else 1
    sampler = MicroBatchSampler(len(dataset), start, run.args.data.micro_batch_size, run.dp_rank, run.dp_size,
                                count)
    return micro_batch_loader(dataset, sampler, run.args.data.num_workers, pad, run.plan.pad_token_id)
