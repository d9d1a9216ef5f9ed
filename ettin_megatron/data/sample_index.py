"""One epoch's sample index: which chunks or tokens of the epoch's documents make each sample.

A sample is a row ``(first, offset, count)`` over the epoch's document order:
- "document" (Ettin): chunk ``offset`` of document ``first``; count 1.
- "packed" (ModernBERT): ``count`` consecutive chunks of the chunk stream (documents in order,
  each document's chunks in order), starting at chunk ``offset`` of document ``first``, greedily
  as many as fit in the sequence.
- "concat" (GPT): the raw token stream from token ``offset`` of document ``first``, exactly the
  sequence length, over ``count`` documents (megatron's own build_sample_idx cuts it).

Rows are int32 when every value fits (12 bytes a sample, as GPTDataset's sample and shuffle indices
together). They are computed vectorized, ``BLOCK`` documents at a time, so that the temporaries stay
bounded whatever the corpus size: a 2T-token corpus has ~2B documents.
"""

from typing import Tuple

import numpy
from megatron.core.datasets.helpers import build_sample_idx

from ettin_megatron.data.chunking import ChunkRules

BLOCK = 1 << 20
"""Documents per vectorized step of the chunking layouts."""


def index_dtype(largest: int) -> type:
    """int32 when values up to `largest` fit, else int64."""
    return numpy.int32 if largest <= numpy.iinfo(numpy.int32).max else numpy.int64


def pack_greedily(cum_lengths: numpy.ndarray, capacity: int) -> numpy.ndarray:
    """Start positions of greedy in-order packing: a sample takes items while they fit.

    ``cum_lengths`` is [0, l0, l0+l1, ...] over items each at most `capacity` long. The greedy
    chain s -> next(s) is sequential, so it is evaluated by pointer doubling (log2(n) vectorized
    steps) instead of a Python loop over what can be billions of samples.
    """
    n = len(cum_lengths) - 1
    jump = numpy.searchsorted(cum_lengths, cum_lengths + capacity, side="right") - 1
    steps = numpy.arange(n + 1)
    position = numpy.zeros(n + 1, dtype=numpy.int64)
    bit = 1
    while bit <= n:
        taken = (steps & bit) != 0
        position[taken] = jump[position[taken]]
        jump = jump[jump]
        bit <<= 1
    return position[position < n]


def _chunk_positions(counts: numpy.ndarray, first: int, dtype: type) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """(document position, chunk number) of every chunk of consecutive documents first, first+1, ..."""
    starts = numpy.cumsum(counts, dtype=numpy.int64) - counts
    position = numpy.repeat(numpy.arange(first, first + len(counts), dtype=dtype), counts)
    chunk = numpy.arange(len(position), dtype=dtype) - numpy.repeat(starts.astype(dtype), counts)
    return position, chunk


def chunk_rows(layout: str, body_lengths: numpy.ndarray, order: numpy.ndarray, rules: ChunkRules) -> numpy.ndarray:
    """Rows of the "document" or "packed" samples of documents `order` (body lengths > 0)."""
    n = len(order)
    total = int(sum(rules.counts(body_lengths[a : a + BLOCK]).sum(dtype=numpy.int64) for a in range(0, n, BLOCK)))
    largest = max(n, int(body_lengths.max(initial=0)) // rules.piece + 1)
    dtype = index_dtype(largest)
    rows, filled = numpy.empty((total, 3), dtype=dtype), 0
    pending = (numpy.empty(0, dtype), numpy.empty(0, dtype), numpy.empty(0, numpy.int32))
    for a in range(0, n, BLOCK):
        lengths, documents = body_lengths[a : a + BLOCK], order[a : a + BLOCK]
        position, chunk = _chunk_positions(rules.counts(lengths), a, dtype)
        if layout == "document":
            rows[filled : filled + len(position)] = numpy.stack([position, chunk, numpy.ones_like(chunk)], 1)
            filled += len(position)
            continue
        # packed: greedy over the framed chunk lengths; the block's last sample may still take
        # chunks of the next block, so it is carried over unfinished.
        framed = rules.chunk_lengths(lengths, documents) + 2
        position, chunk, framed = (numpy.concatenate(pair) for pair in zip(pending, (position, chunk, framed)))
        cum = numpy.concatenate([[0], numpy.cumsum(framed, dtype=numpy.int64)])
        starts = pack_greedily(cum, rules.sequence_length)
        done = starts if a + BLOCK >= n else starts[:-1]
        ends = numpy.append(starts[1:], len(framed))[: len(done)]
        rows[filled : filled + len(done)] = numpy.stack([position[done], chunk[done], ends - done], 1)
        filled += len(done)
        rest = starts[-1] if len(done) < len(starts) else len(framed)
        pending = (position[rest:], chunk[rest:], framed[rest:])
    return rows[:filled]


def shuffle_rows(rows: numpy.ndarray, rng: numpy.random.Generator) -> None:
    """Shuffle the rows of a C-contiguous 2-D array in place, each row moved as one opaque item
    (numpy's shuffle of a 2-D array swaps rows through a slow generic path, ~40x slower)."""
    rng.shuffle(rows.view(numpy.dtype((numpy.void, rows.strides[0]))).reshape(-1))


def concat_rows(lengths: numpy.ndarray, order: numpy.ndarray, sequence_length: int) -> numpy.ndarray:
    """Rows of the "concat" samples of documents `order` (stored lengths, int32, > 0): megatron's
    GPTDataset sample index (C++), without its extra token; the tail that fills no sample is dropped."""
    tokens = int(lengths[order].sum(dtype=numpy.int64))
    if tokens < sequence_length:
        return numpy.empty((0, 3), dtype=numpy.int32)
    bounds = build_sample_idx(lengths, order, sequence_length, 1, tokens, True, False)
    first, offset = bounds[:-1, 0].copy(), bounds[:-1, 1].copy()
    at_end = offset == lengths[order[first]]  # a sample that starts where a document ends
    first[at_end] += 1
    offset[at_end] = 0
    count = bounds[1:, 0] - first + (bounds[1:, 1] > 0)
    return numpy.stack([first, offset, count.astype(bounds.dtype)], 1)
