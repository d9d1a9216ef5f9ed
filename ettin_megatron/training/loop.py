"""The training loop: read it top to bottom.

    pretrain(args)
      check the arguments and the --load checkpoint  (before any process group or compute)
      process groups, seeds                       runtime.initialize
      model chunks in DDP, optimizer, schedule    setup.py, optimizer.py
      resume or fine-tune from --load             checkpointing.py
      datasets                                    batching.py (EttinDataset on megatron's builder)
      for each step:
          micro-batches of this step              batching.step_micro_batches(consumed_samples)
          forward + backward over them            megatron's pipeline schedule (1F1B / interleaved)
          optimizer step, LR step                 megatron's optimizer and scheduler
          log / validate / save                   metrics.py, checkpointing.py

Everything that runs is Megatron-Core's; this file only orders the calls. ``pretrain`` returns the
history of logged rows (what tests compare).
"""

from __future__ import annotations

import os

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from ..config import PRESETS, model_fields
from ..runtime import ParallelLayout, device, initialize
from . import batching, checkpointing
from .arguments import Arguments, reached_end, validate, virtual_pipeline_size
from .forward_step import make_forward_step
from .metrics import Metrics, flops_per_token, is_logging_rank
from .optimizer import build_optimizer, build_scheduler, current_lr
from .setup import build_model, build_model_config, wire_schedule_hooks


def pretrain(args: Arguments, special_tokens: dict | None = None) -> list[dict]:
    """Train as ``args`` say; returns one row per step (loss, lr, grad norm, ...) and validation rows.

    ``special_tokens`` (EttinDatasetConfig's token-id fields) overrides the ids --tokenizer-model gives;
    tests use it for small synthetic vocabularies, whose size they pass as --vocab-size.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; the process group comes later
    dp_size = validate(args, world_size)
    special, vocab = batching.token_ids(args)
    if special_tokens is not None:
        special = special_tokens
    # The shapes only: the model's own config is built after initialize, whose CPU emulation it reads.
    try:
        resume = checkpointing.check_load(args, model_fields(build_model_config(args, vocab_size=vocab)))
    except checkpointing.RunFinished as finished:
        _print(str(finished))
        return []

    # The world, the model, the optimizer.
    layout = ParallelLayout(args.parallel.tensor_model_parallel_size, args.parallel.pipeline_model_parallel_size,
                            virtual_pipeline_size(args, PRESETS[args.model.model_size].num_layers))
    initialize(layout, seed=args.run.seed)
    config = build_model_config(args, vocab_size=vocab)
    model = build_model(args, config)
    optimizer = build_optimizer(args, model)
    scheduler = build_scheduler(args, optimizer)
    wire_schedule_hooks(config, model, optimizer, args)
    batching.init_microbatches(args, torch.distributed.get_rank(), dp_size)

    # Where to start.
    iteration, consumed = 0, 0
    if resume:
        iteration, consumed = checkpointing.load(resume, model, optimizer, scheduler, args.run.finetune)
        _print(f"loaded {args.run.load}: continuing at step {iteration}, {consumed:,} samples consumed")
    elif args.run.load:
        _print(f"no checkpoint in {args.run.load} yet: starting from scratch")

    # Data: every rank reads (pipeline stages all need the packing boundaries).
    gbs, eval_batches = args.data.global_batch_size, args.run.eval_iters
    total_samples = args.run.train_samples or args.run.train_iters * gbs
    train_ds, valid_ds = batching.build_datasets(args, total_samples, eval_batches * gbs, special)
    if valid_ds is None:
        eval_batches = 0  # the split leaves no validation documents
    dp_rank = parallel_state.get_data_parallel_rank()
    pad = args.parallel.tensor_model_parallel_size if config.sequence_parallel else 1
    num_chunks = len(model)

    def micro_batches(dataset, start, n):
        """One iterator per model chunk (each virtual stage reads the same micro-batches)."""
        its = [batching.step_micro_batches(dataset, start, n, args.data.micro_batch_size, dp_rank, dp_size, pad)
               for _ in range(num_chunks)]
        return its[0] if num_chunks == 1 else its

    forward_backward = get_forward_backward_func()
    train_step_fn, eval_step_fn = make_forward_step(device()), make_forward_step(device(), evaluation=True)
    params = count_parameters(config)
    metrics = Metrics(args.run.tensorboard_dir, args.run.train_iters, args.run.train_samples,
                      flops_per_token(config, params, args.data.seq_length), world_size, args.model.objective)
    _print(f"model {args.model.model_size} ({args.model.objective}): {params / 1e6:.1f}M parameters, "
           f"TP={layout.tensor_parallel} PP={layout.pipeline_parallel} VPP={layout.virtual_pipeline_parallel} "
           f"DP={dp_size}")

    def evaluate(step):
        for chunk in model:
            chunk.eval()
        totals, num_micro = torch.zeros(3), gbs // (args.data.micro_batch_size * dp_size)
        with torch.no_grad():  # the same first eval_iters global batches of the valid split every time
            for k in range(eval_batches):
                reports = forward_backward(
                    forward_step_func=eval_step_fn, data_iterator=micro_batches(valid_ds, k * gbs, num_micro),
                    model=model, num_microbatches=num_micro, seq_length=args.data.seq_length,
                    micro_batch_size=1, forward_only=True)
                totals += _sum_reports(reports)
        for chunk in model:
            chunk.train()
        loss_sum, tokens, correct = _reduce(totals).tolist()
        return metrics.log_validation(step, loss_sum / max(tokens, 1), correct / max(tokens, 1), int(tokens))

    history = []
    for chunk in model:
        chunk.train()
    while not reached_end(args, iteration, consumed):
        # One optimizer step.
        num_micro, batch_size = batching.update_microbatches(consumed)
        for chunk in model:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        reports = forward_backward(
            forward_step_func=train_step_fn, data_iterator=micro_batches(train_ds, consumed, num_micro),
            model=model, num_microbatches=num_micro, seq_length=args.data.seq_length, micro_batch_size=1,
            forward_only=False)
        updated, grad_norm, _ = optimizer.step()
        if updated:
            scheduler.step(increment=batch_size)
        iteration += 1
        consumed += batch_size

        # Report, validate, save.
        loss_sum, tokens, input_tokens = _reduce(_sum_reports(reports)).tolist()
        metrics.add_tokens(int(input_tokens))
        row = {"step": iteration, "loss": loss_sum / max(tokens, 1), "lr": current_lr(optimizer),
               "grad_norm": None if grad_norm is None else float(grad_norm), "batch_size": batch_size}
        if iteration == 1 or iteration % args.run.log_interval == 0 or reached_end(args, iteration, consumed):
            row = metrics.log_step(iteration, consumed, row["loss"], row["lr"], row["grad_norm"], batch_size)
        history.append(row)
        if args.run.eval_interval and iteration % args.run.eval_interval == 0 and eval_batches:
            history.append(evaluate(iteration))
        exiting = bool(args.run.exit_interval and iteration % args.run.exit_interval == 0)
        if args.run.save and (exiting or (args.run.save_interval and iteration % args.run.save_interval == 0)):
            _save(args, iteration, consumed, model, optimizer, scheduler, config)
        if exiting:
            break

    if not args.run.exit_interval or iteration % args.run.exit_interval:
        if eval_batches and (not args.run.eval_interval or iteration % args.run.eval_interval):
            history.append(evaluate(iteration))
        if args.run.save and not (args.run.save_interval and iteration % args.run.save_interval == 0):
            _save(args, iteration, consumed, model, optimizer, scheduler, config)
    metrics.close()
    return history


def _save(args, iteration, consumed, model, optimizer, scheduler, config) -> None:
    path = checkpointing.save(args.run.save, iteration, consumed, model, optimizer, scheduler, config,
                              tokenizer=args.data.tokenizer_model)
    _print(f"saved checkpoint {path}")


def _sum_reports(reports: list) -> torch.Tensor:
    """Sum this rank's micro-batch reports, [loss sum, labelled tokens, input tokens or correct]
    (the reports exist only on the last pipeline stage; zeros elsewhere)."""
    total = torch.zeros(3)
    for report in reports:
        total += report["lm loss"].detach().float().cpu()
    return total


def _reduce(values: torch.Tensor) -> torch.Tensor:
    """Sum over DP ranks on the last pipeline stage, then share it with every stage."""
    values = values.to(device())
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        torch.distributed.all_reduce(values, group=parallel_state.get_data_parallel_group())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(values, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                    group=parallel_state.get_pipeline_model_parallel_group())
    return values.cpu()


def count_parameters(config) -> int:
    """Parameters of the whole model (tied embedding once), whatever the parallel layout."""
    h, f, v, n = config.hidden_size, config.ffn_hidden_size, config.vocab_size, config.num_layers
    embedding = v * h + h                          # token embedding + its norm
    layers = n * (4 * h * h + 3 * h * f + 2 * h) - h   # QKV + out, GeGLU fc1 (2f) + fc2, 2 norms (layer 0: 1)
    head = h + h * h + h + v                        # final norm, dense + norm, vocab bias (weight tied)
    return embedding + layers + head


def _print(message: str) -> None:
    if is_logging_rank():
        print(message, flush=True)
