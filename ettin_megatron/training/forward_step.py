"""One micro-batch through the model, and the loss convention Megatron's schedules expect.

The loss function returns Megatron's three-tuple ``(loss, num_tokens, report)``: ``loss`` is the *sum*
of per-token losses over ``loss_mask``, ``num_tokens`` the number of labelled tokens. With
``config.calculate_per_token_loss`` the schedule neither divides by the micro-batch count nor by the
tokens; ``finalize_model_grads`` divides the gradients by the global token count (all micro-batches,
all DP ranks), as Megatron-LM does. The step's loss is therefore the mean over every labelled token of
the global batch, whatever the micro-batch size, DP size or packing.

The report (``{"lm loss": tensor}``, Megatron's key) is a ``TrainReport`` in training: besides the loss
sum and the labelled tokens, the micro-batch's input tokens (its samples' tokens, padding excluded:
tokens/s and token budgets) and the (query, key) pairs its attention scored (for MFU, counted on the
device from its documents); an ``EvalReport`` in evaluation, with the number of correct argmax
predictions. Each is stacked into one tensor here and read back only through ``sum_reports`` and the
report's fields, so no other module knows their order. The token counts of one micro-batch are exact in
float32 (below 2**24); ``sum_reports`` sums them in float64 so that a step's counts stay exact.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel.utils import VocabUtility

from .. import runtime
from ..model import packed_seq_params
from ..model.counts import attended_pairs


class TrainReport(NamedTuple):
    """What a training micro-batch reports (and, summed, a training step)."""

    loss_sum: float
    labelled: float
    input_tokens: float
    pairs: float


class EvalReport(NamedTuple):
    """What an evaluation micro-batch reports (and, summed, a validation pass)."""

    loss_sum: float
    labelled: float
    correct: float


def sum_reports(reports: list[dict], kind: type) -> torch.Tensor:
    """This rank's micro-batch reports of ``kind`` (TrainReport or EvalReport) summed field by field, on
    the device, in float64 (zeros where there are none: only the last pipeline stage has reports);
    ``kind(*values.tolist())`` reads the sum."""
    if not reports:
        return torch.zeros(len(kind._fields), dtype=torch.float64, device=runtime.device())
    return torch.stack([report["lm loss"].detach() for report in reports]).double().sum(0)


def micro_batch_losses(reports: list[dict]) -> torch.Tensor:
    """Each training micro-batch's loss sum, on the device."""
    return torch.stack([report["lm loss"][TrainReport._fields.index("loss_sum")] for report in reports])


def _report(kind: type, *values: torch.Tensor) -> dict:
    return {"lm loss": torch.stack(kind(*values))}


def _next_batch(data_iterator, device) -> tuple[dict, object]:
    """The next micro-batch on ``device`` (copies that do not wait: the loader pins its memory on a GPU
    machine), and its packed-sequence parameters, which keep the document lengths on the host too."""
    batch = next(data_iterator)
    params = packed_seq_params(batch["cu_seqlens"], batch["max_seqlen"], device, batch["segment_lengths"])
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}, params


def loss_func(loss_mask: torch.Tensor, input_tokens: int, pairs: torch.Tensor, output_tensor: torch.Tensor):
    """Per-token losses [1, T] -> (sum over loss_mask, labelled tokens, the TrainReport)."""
    mask = loss_mask.reshape(-1).float()
    loss = torch.sum(output_tensor.float().reshape(-1) * mask)
    num_tokens = mask.sum().detach().to(torch.int)
    return loss, num_tokens, _report(TrainReport, loss.detach(), mask.sum().detach(),
                                     mask.new_full((), float(input_tokens)), pairs.float())


def vocab_parallel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``argmax(-1)`` of the full-vocabulary logits, from this rank's vocabulary shard [..., V/TP]:
    each rank's best (value, index), then a max- and a min-reduce of [...]-sized tensors over the TP
    group instead of gathering [..., V] logits. Ties go to the lowest index, as with ``argmax``."""
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    local_index = logits.argmax(-1)
    if tp_size == 1:
        return local_index
    first, _ = VocabUtility.vocab_range_from_per_partition_vocab_size(
        logits.shape[-1], parallel_state.get_tensor_model_parallel_rank(), tp_size)
    group = parallel_state.get_tensor_model_parallel_group()
    local_max = logits.gather(-1, local_index.unsqueeze(-1)).squeeze(-1)
    best = local_max.clone()
    torch.distributed.all_reduce(best, op=torch.distributed.ReduceOp.MAX, group=group)
    index = torch.where(local_max == best, local_index + first, logits.shape[-1] * tp_size)
    torch.distributed.all_reduce(index, op=torch.distributed.ReduceOp.MIN, group=group)
    return index


def eval_loss_func(labels: torch.Tensor, loss_mask: torch.Tensor, logits: torch.Tensor):
    """Vocab-parallel logits [1, T, V/TP] -> loss sum, tokens, and the number of correct argmax tokens."""
    mask = loss_mask.reshape(-1).float()
    logits = logits.float()
    losses = tensor_parallel.vocab_parallel_cross_entropy(logits.transpose(0, 1).contiguous(), labels.t())
    loss = torch.sum(losses.t().reshape(-1) * mask)
    correct = ((vocab_parallel_argmax(logits).reshape(-1) == labels.reshape(-1)).float() * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    return loss, num_tokens, _report(EvalReport, loss, mask.sum(), correct)


def make_forward_step(device: torch.device, config, evaluation: bool = False):
    """The ``forward_step_func(data_iterator, model)`` that Megatron's schedules call per micro-batch."""

    def forward_step(data_iterator, model):
        batch, params = _next_batch(data_iterator, device)
        if evaluation:
            output = model(batch["tokens"], batch["position_ids"], packed_seq_params=params)
            return output, partial(eval_loss_func, batch["labels"], batch["loss_mask"])
        output = model(batch["tokens"], batch["position_ids"], labels=batch["labels"], packed_seq_params=params)
        return output, partial(loss_func, batch["loss_mask"], batch["num_tokens"],
                               attended_pairs(batch["cu_seqlens"], config))

    return forward_step
