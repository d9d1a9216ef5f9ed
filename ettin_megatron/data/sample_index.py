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


FOLLOW_STEPS = 256
"""Samples that pack_greedily follows one at a time per run before it doubles: a step costs ~1/50 of a
doubling step over a whole block, so following pays up to a few hundred samples a run."""


def pack_greedily(cum_lengths: numpy.ndarray, capacity: int) -> numpy.ndarray:
    """Start positions of greedy in-order packing: a sample takes items while they fit.

    ``cum_lengths`` is [0, l0, l0+l1, ...] over items each at most `capacity` long. The greedy
    chain s -> next(s) is sequential, but an item that cannot share a sample with the one before it
    starts a sample whatever came before: the chain is known at those items from the outset, and only
    the runs of samples between them need following. All runs advance together, one sample a step
    (runs are short on web-like lengths, benchmarks/index_build.py's: at most 9 samples at 1024, ~100
    at 7999). Runs still going after ``FOLLOW_STEPS`` (a corpus of tiny items can make one run of a
    whole block) are finished by pointer doubling: with ``jump`` = next applied 2^k times, each run's first 2^k starts give the
    next 2^k, so a long run costs log2 of its length in vectorized steps, not its length.
    A sample that starts at an item which cannot share a sample with the next one holds that item
    alone, so its next needs no search (full chunks, and about half of the others there at 1024).
    """
    n = len(cum_lengths) - 1
    lengths = numpy.diff(cum_lengths)
    ends = numpy.flatnonzero(lengths[:-1] + lengths[1:] > capacity)  # item i cannot share with i + 1
    jump = numpy.arange(1, n + 2, dtype=index_dtype(n + 1))
    jump[n] = n  # the end stays at the end
    searched = numpy.ones(n, dtype=bool)
    searched[ends] = False
    searched[n - 1 :] = False  # the last item ends the chain
    searched = numpy.flatnonzero(searched)
    jump[searched] = numpy.searchsorted(cum_lengths, cum_lengths[searched] + capacity, side="right") - 1
    tips = numpy.concatenate([[0], ends + 1]) if n else numpy.empty(0, numpy.int64)
    known = numpy.zeros(n + 1, dtype=bool)
    known[tips] = known[n] = True
    for _ in range(FOLLOW_STEPS):  # each run's last known start, until it reaches the next run
        tips = jump[tips]
        tips = tips[~known[tips]]
        if not len(tips):
            return numpy.flatnonzero(known[:n])
        known[tips] = True
    starts = numpy.flatnonzero(known)  # every run's first FOLLOW_STEPS + 1 starts, or all of them
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


class _Packer:
    """Greedy packing of the framed chunks of consecutive blocks of documents. A block's last sample
    may take chunks of the next block, so it is carried over unfinished: its chunks' framed lengths
    and where it starts."""

    def __init__(self, rules: ChunkRules) -> None:
        self.rules, self.pending, self.start = rules, numpy.empty(0, numpy.int32), (0, 0)

    def add(self, lengths: numpy.ndarray, documents: numpy.ndarray, counts: numpy.ndarray, first: int,
            last: bool) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """(document position, chunk number) where each finished sample starts, for the documents at
        positions first, first+1, ... (bodies `lengths`, chunk `counts`); `last`: the final block."""
        framed = numpy.concatenate([self.pending, self.rules.chunk_lengths(lengths, documents, counts) + 2])
        starts = pack_greedily(numpy.concatenate([[0], numpy.cumsum(framed, dtype=numpy.int64)]),
                               self.rules.sequence_length)
        # which chunk of which document each start is; the carried sample's (starts[0]) is known
        carried = 1 if len(self.pending) else 0
        chunk = starts[carried:] - len(self.pending)
        position = numpy.repeat(numpy.arange(len(counts)), counts)[chunk]
        chunk -= (numpy.cumsum(counts, dtype=numpy.int64) - counts)[position]
        position += first
        if carried:
            position, chunk = (numpy.concatenate([[known], found]) for known, found in zip(self.start, (position, chunk)))
        done = len(starts) if last else len(starts) - 1
        if done < len(starts):
            self.pending, self.start = framed[starts[done] :], (position[done], chunk[done])
        return position[:done], chunk[:done]


def chunk_bounds(layout: str, stored: numpy.ndarray, framing: int, order: numpy.ndarray, rules: ChunkRules,
                 census: Census) -> numpy.ndarray:
    """Bounds of the "document" or "packed" samples of documents `order` (their census; bodies: the
    stored lengths less `framing`, all > 0)."""
    n = len(order)
    dtype = index_dtype(max(n, census.longest // rules.piece + 1))
    # "packed" fills fewer rows than chunks: the rest of the allocation is never written
    bounds, filled = numpy.empty((census.chunks + 1, 2), dtype=dtype), 0
    packer = _Packer(rules) if layout == "packed" else None
    for a in range(0, n, BLOCK):
        documents = order[a : a + BLOCK]
        lengths = stored[documents] - framing
        counts = rules.counts(lengths)
        if packer is None:
            position, chunk = _chunk_positions(counts, a, dtype)
        else:
            position, chunk = packer.add(lengths, documents, counts, a, last=a + BLOCK >= n)
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
