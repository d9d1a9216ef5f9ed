"""The run's datasets, and how many samples and micro-batches an optimizer step has.

A step's global batch follows Megatron-LM's ``--rampup-batch-size START INCREMENT SAMPLES``: it grows by
INCREMENT from START, one increment per SAMPLES / ((global batch - START) / INCREMENT) samples consumed,
and is the full batch past SAMPLES (megatron-core 0.16's micro-batch calculator, computed here: from 0.18
on megatron ignores the ramp). ``--rampup-batch-size-tokens START INCREMENT TOKENS`` is the same rule over
the consumed input tokens (``ramp_position``). A step has global batch / (micro batch x DP)
micro-batches; which samples each holds is data_loader.py's business.
"""

from __future__ import annotations

import math

from ..data.datasets import EttinDatasetConfig, build_datasets
from .arguments import Arguments
from .plan import RunPlan


def ramp_position(args: Arguments, consumed_samples: int, consumed_tokens: int) -> int:
    """Where the batch-size ramp-up stands, in the unit of its length. Both counts are functions of the
    data position alone (the tokens are those of samples [0, consumed_samples)), so the step's batch
    is too, whatever the parallel layout or restart."""
    return consumed_tokens if args.data.rampup_batch_size_tokens else consumed_samples


def step_batch(args: Arguments, data_parallel_size: int, position: int) -> tuple[int, int]:
    """(micro-batches per step, global batch size) at ``position`` (ramp_position's). plan_run has fitted
    START and INCREMENT to multiples of micro batch x DP that reach the global batch."""
    d = args.data
    batch = d.global_batch_size
    ramp = d.rampup_batch_size or d.rampup_batch_size_tokens
    if ramp and position <= ramp[2]:
        start, increment, length = ramp
        per_increment = length / ((batch - start) // increment)  # float division, as megatron's
        batch = start + int(position / per_increment) * increment
    return batch // (d.micro_batch_size * data_parallel_size), batch


PROBE_SAMPLES = 1024
"""Samples whose mean length sizes a token-budget run's train split before its first step."""


def planned_samples(args: Arguments) -> int:
    """Train samples to build: the run's samples (iterations x the global batch, an upper bound under
    ramp-up), or for a token budget the fewest that can hold it (a sample has at most seq_length
    tokens), which token_budget_samples then corrects."""
    r, d = args.run, args.data
    if r.train_tokens is not None:
        return -(-r.train_tokens // d.seq_length)
    return r.train_samples or r.train_iters * d.global_batch_size


def token_budget_samples(args: Arguments, dataset, consumed_samples: int, consumed_tokens: int) -> int:
    """Train samples a --train-tokens run reads in all, estimated: those read so far plus the rest of the
    budget at the mean tokens per sample (of the samples read so far; before the first step, of the
    dataset's first PROBE_SAMPLES, a shuffled draw), with 5% to spare and one global batch for the last
    step's overshoot. Samples are shorter than seq_length by a data-dependent amount (short documents,
    chunk tails), so no fixed count holds a token budget. Every rank reads the same samples, so every
    rank gets the same number."""
    if consumed_samples:
        mean = consumed_tokens / consumed_samples
    else:
        probe = range(min(len(dataset), PROBE_SAMPLES))
        mean = sum(len(dataset[i]["tokens"]) for i in probe) / len(probe)
    left = max(args.run.train_tokens - consumed_tokens, 0)
    return consumed_samples + math.ceil(left / mean * 1.05) + args.data.global_batch_size


def dataset_config(args: Arguments, blend: tuple, token_ids: dict) -> EttinDatasetConfig:
    """The datasets' config of a run's arguments: its blend, split, seed, layout, objective and token ids.
    Evaluation (evaluation/heldout.py) builds its validation split from the same config, so that its
    samples and masks are the run's."""
    d = args.data
    return EttinDatasetConfig(
        random_seed=args.run.seed, sequence_length=d.seq_length, blend=blend, split=d.split,
        path_to_cache=d.data_cache_path, layout=d.data_layout, min_chunk_size=d.min_chunk_size,
        always_skip_size=d.always_skip_size, objective=args.model.objective,
        mask_rate=d.mask_rate, **token_ids,
    )


def run_datasets(plan: RunPlan, train_samples: int, valid_samples: int):
    """(train, valid) EttinDatasets of the run's blend, split, layout, objective and token ids."""
    config = dataset_config(plan.args, plan.blend, plan.token_ids)
    # 0, not None, for splits the run does not read: megatron's builder refuses a None size with a
    # weighted blend (any --data-mix or "--data-path W1 P1 W2 P2"), and 0 builds nothing to read.
    train, valid, _ = build_datasets(config, [train_samples, valid_samples, 0])
    return train, valid
