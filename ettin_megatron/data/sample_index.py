"""One epoch's sample index: where each sample starts in the epoch's documents, as megatron's
GPTDataset stores it.

``bounds[i] = (position, offset)``: sample i starts at chunk ``offset`` of the document at
``position`` of the epoch's order ("document", "packed"), or at token ``offset`` of it ("concat").
Samples are listed in reading order and the last row is where the epoch's last sample ends (for
"packed", sample i ends where sample i + 1 starts). A "document" sample is one chunk, a "concat" one
exactly the sequence length, a "packed" one the chunks that fit, greedily, in the sequence.

Rows are int32 when every value fits: with GPTDataset's uint32 shuffle index beside them, 12 bytes
a sample, as GPTDataset. They are computed vectorized, ``BLOCK`` documents at a time, straight from
the stored lengths, so that the temporaries stay bounded whatever the corpus size (a 2T-token corpus
has ~2B documents): the only corpus-sized arrays are the outputs.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy
from megatron.core.datasets.helpers import build_sample_idx

from ettin_megatron.data.chunking import ChunkRules

BLOCK = 1 << 16
"""Documents per vectorized step of the chunking layouts: temporaries of a few MB, which the allocator
reuses block after block. Larger blocks are no faster and leave heap fragments their size behind
(+18 MB peak for "packed" at 2^18 on 1M documents)."""


def index_dtype(largest: int) -> type:
    """int32 when values up to `largest` fit, else int64."""
    return numpy.int32 if largest <= numpy.iinfo(numpy.int32).max else numpy.int64


def shuffle_dtype(samples: int) -> type:
    """uint32 for a shuffle index of up to 2^32 - 1 samples, else int64 (as GPTDataset)."""
    return numpy.uint32 if samples < numpy.iinfo(numpy.uint32).max else numpy.int64


@dataclass(frozen=True)
class Census:
    """Sums over one epoch's documents, the same in every epoch (the order does not change them):
    what the build report says and what sizes the sample bounds."""

    documents: int
    tokens: int
    """Body tokens (stored tokens for "concat")."""
    chunks: int = 0
    dropped: int = 0
    """Tokens the always-skip rule drops."""
    longest: int = 0
    """The longest body."""


def epoch_documents(stored: numpy.ndarray, indices: numpy.ndarray, framing: int,
                    rules: Optional[ChunkRules]) -> Tuple[numpy.ndarray, Census]:
    """The documents of `indices` that have a body (stored length above `framing`), in order, and
    their census (chunks and drops only with `rules`); one pass, ``BLOCK`` documents at a time."""
    documents, kept = numpy.empty(len(indices), index_dtype(len(stored))), 0
    tokens = chunks = dropped = longest = 0
    for a in range(0, len(indices), BLOCK):
        block = indices[a : a + BLOCK]
        body = stored[block] - framing
        keep = body > 0
        body = body[keep]
        documents[kept : kept + len(body)] = block[keep]
        kept += len(body)
        tokens += int(body.sum(dtype=numpy.int64))
        longest = max(longest, int(body.max(initial=0)))
        if rules is not None:
            chunks += int(rules.counts(body).sum(dtype=numpy.int64))
            dropped += int(rules.dropped(body).sum(dtype=numpy.int64))
    # a view: the unused tail of the allocation was never written, so it costs no memory
    return documents[:kept], Census(kept, tokens, chunks, dropped, longest)


def pack_greedily(cum_lengths: numpy.ndarray, capacity: int) -> numpy.ndarray:
    """Start positions of greedy in-order packing: a sample takes items while they fit.

    ``cum_lengths`` is [0, l0, l0+l1, ...] over items each at most `capacity` long. The greedy
    chain s -> next(s) is sequential, so it is evaluated by pointer doubling instead of a Python loop
    over what can be billions of samples. An item that cannot share a sample with the one before it
    starts a sample whatever came before, so the chain is known at those items from the outset; with
    ``jump`` = next applied 2^k times, each one's first 2^k starts give the next 2^k, until no start is
    new (log2 of the longest run of samples between such items: a few vectorized steps on text).
    """
    n = len(cum_lengths) - 1
    jump = numpy.searchsorted(cum_lengths, cum_lengths + capacity, side="right") - 1  # n stays at n
    jump = jump.astype(index_dtype(n), copy=False)
    lengths = numpy.diff(cum_lengths)
    starts = numpy.flatnonzero(numpy.concatenate([[True], lengths[:-1] + lengths[1:] > capacity]))
    known = numpy.zeros(n + 1, dtype=bool)
    known[starts] = known[n] = True
    while True:
        reached = jump[starts]  # the chain is one path: distinct starts reach distinct starts
        new = reached[~known[reached]]
        if not len(new):
            return numpy.flatnonzero(known[:n])
        known[new] = True
        starts = numpy.concatenate([starts, new])
        jump = jump[jump]


def _chunk_positions(counts: numpy.ndarray, first: int, dtype: type) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """(document position, chunk number) of every chunk of consecutive documents first, first+1, ..."""
    starts = numpy.cumsum(counts, dtype=numpy.int64) - counts
    position = numpy.repeat(numpy.arange(first, first + len(counts), dtype=dtype), counts)
    chunk = numpy.arange(len(position), dtype=dtype) - numpy.repeat(starts.astype(dtype), counts)
    return position, chunk


def chunk_bounds(layout: str, stored: numpy.ndarray, framing: int, order: numpy.ndarray, rules: ChunkRules,
                 census: Census) -> numpy.ndarray:
    """Bounds of the "document" or "packed" samples of documents `order` (their census; bodies: the
    stored lengths less `framing`, all > 0)."""
    n = len(order)
    dtype = index_dtype(max(n, census.longest // rules.piece + 1))
    # "packed" fills fewer rows than chunks: the rest of the allocation is never written
    bounds, filled = numpy.empty((census.chunks + 1, 2), dtype=dtype), 0
    pending = (numpy.empty(0, dtype), numpy.empty(0, dtype), numpy.empty(0, numpy.int32))
    for a in range(0, n, BLOCK):
        documents = order[a : a + BLOCK]
        lengths = stored[documents] - framing
        position, chunk = _chunk_positions(rules.counts(lengths), a, dtype)
        if layout == "packed":  # greedy over the framed chunk lengths; the block's last sample
            # may take chunks of the next block, so it is carried over unfinished
            framed = rules.chunk_lengths(lengths, documents) + 2
            position, chunk, framed = (numpy.concatenate(pair) for pair in zip(pending, (position, chunk, framed)))
            starts = pack_greedily(numpy.concatenate([[0], numpy.cumsum(framed, dtype=numpy.int64)]), rules.sequence_length)
            done = len(starts) if a + BLOCK >= n else len(starts) - 1
            rest = starts[done] if done < len(starts) else len(framed)
            pending = (position[rest:], chunk[rest:], framed[rest:])
            position, chunk = position[starts[:done]], chunk[starts[:done]]
        bounds[filled : filled + len(position), 0] = position
        bounds[filled : filled + len(position), 1] = chunk
        filled += len(position)
    bounds[filled] = (n, 0)
    return bounds[: filled + 1]


def concat_bounds(lengths: numpy.ndarray, order: numpy.ndarray, sequence_length: int, tokens: int) -> numpy.ndarray:
    """Bounds of the "concat" samples of documents `order` (stored lengths, int32, > 0; `tokens` of
    them in all): megatron's GPTDataset sample index (C++), without its extra token; the tail that
    fills no sample is dropped."""
    if tokens < sequence_length:
        return numpy.zeros((1, 2), dtype=numpy.int32)
    return build_sample_idx(lengths, order, sequence_length, 1, tokens, True, False)
