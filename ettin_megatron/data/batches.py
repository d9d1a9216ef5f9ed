"""The packed (THD) micro-batch the model consumes, and conversions from/to HF-style padded batches.

Contract: a micro-batch is ONE packed row of all its samples' attention segments, a dict of
    tokens        LongTensor[1, T]
    labels        LongTensor[1, T]    target id of each position, 0 where there is no label
    loss_mask     FloatTensor[1, T]   1.0 where the label counts
    position_ids  LongTensor[1, T]    restart at 0 at each attention segment (RoPE positions)
    cu_seqlens    IntTensor[n_segments + 1], int32, 0 first, T last (varlen attention boundaries)
    max_seqlen    int                 the longest segment
    num_tokens    int                 the samples' tokens, T without the padding segment (what token
                                      budgets count, the same at any TP)
    segment_lengths list[int]         the segments' lengths as numbers (read where the batch is made,
                                      so kernels that loop on the host never read them off the GPU)
No position holds a pad token unless `pad_to_multiple_of` asks for one (see collate), so no compute
is spent on padding: this is the "unpadded" training of ModernBERT / Ettin.
"""

import hashlib
from typing import Dict, Mapping, Sequence, Union

import numpy
import torch

from ettin_megatron.vocab import MODERNBERT_IDS

Batch = Dict[str, Union[torch.Tensor, int, list]]


def collate(
    samples: Sequence[Mapping[str, numpy.ndarray]],
    pad_to_multiple_of: int = 1,
    pad_token_id: int = MODERNBERT_IDS.pad,
) -> Batch:
    """Concatenate dataset samples (tokens, labels, loss_mask, segment_lengths) into one packed row.

    When T must be a multiple of k (sequence parallelism splits T over TP ranks), pass
    ``pad_to_multiple_of=k``: if T % k != 0, ONE extra segment of ``k - T % k`` pad tokens is
    appended, with labels 0 and loss_mask 0. Being its own segment, it attends only to itself, so
    the real tokens' outputs are exactly those of the unpadded batch. Nothing is added otherwise.
    Extra keys (e.g. a blend's "dataset_id") are ignored.
    """
    # numpy, then one tensor per field: torch's per-call cost would otherwise dominate (a micro-batch
    # of short documents holds hundreds of samples), and DataLoader workers run this per micro-batch.
    tokens = numpy.concatenate([s["tokens"] for s in samples], dtype=numpy.int64)
    labels = numpy.concatenate([s["labels"] for s in samples], dtype=numpy.int64)
    loss_mask = numpy.concatenate([s["loss_mask"] for s in samples], dtype=numpy.float32)
    lengths = numpy.concatenate([s["segment_lengths"] for s in samples], dtype=numpy.int64)
    if int(lengths.sum()) != len(tokens):
        raise ValueError(
            f"segment_lengths sum to {int(lengths.sum())} but the samples hold {len(tokens)} "
            "tokens: every sample's segment_lengths must cover exactly its tokens."
        )
    num_tokens = len(tokens)
    padding = -num_tokens % pad_to_multiple_of
    if padding:
        tokens = numpy.concatenate([tokens, numpy.full(padding, pad_token_id, dtype=numpy.int64)])
        labels = numpy.concatenate([labels, numpy.zeros(padding, dtype=numpy.int64)])
        loss_mask = numpy.concatenate([loss_mask, numpy.zeros(padding, dtype=numpy.float32)])
        lengths = numpy.append(lengths, padding)
    lengths = lengths[lengths > 0]
    cu_seqlens = numpy.concatenate([[0], numpy.cumsum(lengths)])
    position_ids = numpy.arange(len(tokens)) - numpy.repeat(cu_seqlens[:-1], lengths)
    return {
        "tokens": torch.from_numpy(tokens)[None],
        "labels": torch.from_numpy(labels)[None],
        "loss_mask": torch.from_numpy(loss_mask)[None],
        "position_ids": torch.from_numpy(position_ids)[None],
        "cu_seqlens": torch.from_numpy(cu_seqlens.astype(numpy.int32)),
        "max_seqlen": int(lengths.max()) if len(lengths) else 0,
        "num_tokens": num_tokens,
        "segment_lengths": lengths.tolist(),
    }


def unpad(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Batch:
    """Turn a padded HF-style batch [b, s] into the packed row: each row's attended tokens, in
    order, become one segment (labels and loss_mask zero). Inverse of `repad` on positions."""
    keep = attention_mask.bool()
    samples = []
    for row, row_keep in zip(input_ids, keep):
        tokens = row[row_keep]
        zeros = torch.zeros_like(tokens)
        samples.append(
            {
                "tokens": tokens,
                "labels": zeros,
                "loss_mask": zeros,
                "segment_lengths": [len(tokens)],
            }
        )
    return collate(samples)


def repad(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scatter packed per-token values [1, T, ...] back to the padded layout [b, s, ...] of
    `attention_mask`, zeros at pad positions, so packed outputs compare with HF-style ones.

    The first ``attention_mask.sum()`` positions are used; any further ones (a trailing padding
    segment added by collate) are dropped.
    """
    keep = attention_mask.bool()
    num_tokens = int(keep.sum())
    if values.shape[0] != 1 or values.shape[1] < num_tokens:
        raise ValueError(
            f"repad needs values of shape [1, T >= {num_tokens}, ...] for this attention_mask, "
            f"got {tuple(values.shape)}."
        )
    padded = values.new_zeros(keep.shape + values.shape[2:])
    padded[keep] = values[0, :num_tokens]
    return padded


def batch_digest(batch: Batch) -> str:
    """A fingerprint of everything a micro-batch holds (each field's name, type, dtype, shape, strides
    and bytes): equal digests mean the model saw the same thing. Golden values and before/after diffs of
    the data pipeline compare them."""
    h = hashlib.sha256()
    for key in sorted(batch):
        value = batch[key]
        if torch.is_tensor(value):
            h.update(f"{key}{value.dtype}{tuple(value.shape)}{value.stride()}".encode())
            h.update(value.contiguous().numpy().tobytes())
        else:
            h.update(f"{key}{type(value).__name__}{value!r}".encode())
    return h.hexdigest()[:16]
