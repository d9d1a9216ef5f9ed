"""Ettin's chunking of documents into samples, as arithmetic on document lengths.

Ettin's data pipeline (pretraining/data_processing/src/sampling/split_dataset_into_chunks_individual.py,
run with ``-c 1024 -m 512 -a 128 --backfill --backfill_no_duplicates``) cut every document body into
consecutive pieces of ``chunk_size - 2`` tokens and framed each ``[CLS] piece [SEP]``:

- a piece shorter than ``always_skip_size`` is dropped, unless it is the document's first;
- a piece shorter than ``min_chunk_size`` that follows another is backfilled: a random number
  ``r`` in ``[0, chunk_size - 2 - len)`` of tokens moves from the end of the previous piece to its
  front (no token duplicated, both pieces stay within the chunk size).

Only a document's last piece can be short, so a body of ``L`` tokens has ``L // P`` full pieces
(``P = chunk_size - 2``) and at most one remainder: its chunks are a function of ``(L, r)``. The
sample index therefore stores (document, chunk number) and a chunk's tokens are recomputed when it
is read. ``r`` is a counter-based hash of (seed, document), not a draw from a generator in call
order, so a document is chunked the same way in every epoch, process and rank.
"""

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy
from megatron.core.datasets.indexed_dataset import get_bin_path

from ettin_megatron.data.index_file import IndexFile
from ettin_megatron.errors import ConfigError

_GOLDEN, _MIX1, _MIX2 = (numpy.uint64(v) for v in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def splitmix64(values: numpy.ndarray) -> numpy.ndarray:
    """The splitmix64 finalizer of each value (uint64): a fast, well-mixed counter-based hash."""
    z = values.astype(numpy.uint64) * _GOLDEN
    with numpy.errstate(over="ignore"):
        z = (z ^ (z >> numpy.uint64(30))) * _MIX1
        z = (z ^ (z >> numpy.uint64(27))) * _MIX2
    return z ^ (z >> numpy.uint64(31))


@dataclass(frozen=True)
class ChunkRules:
    """How document bodies become framed chunks of at most ``sequence_length`` tokens."""

    sequence_length: int
    min_chunk_size: int
    always_skip_size: int
    seed: int

    @classmethod
    def for_sequence(cls, sequence_length: int, min_chunk_size: Optional[int] = None,
                     always_skip_size: Optional[int] = None, seed: int = 0) -> "ChunkRules":
        """The rules at a sequence length; a size left None is Ettin's (512 and 128 at 1024 and
        above) or, below 1024, the same share of the sequence (1/2 and 1/8): Ettin's absolute sizes
        would drop every piece after a document's first in a 32-token demo (128 > 30)."""
        if sequence_length < 3:
            raise ConfigError(f"sequence_length must be at least 3 to chunk documents ([CLS] and [SEP] "
                              f"frame every chunk), got {sequence_length}.")
        min_chunk_size = min(512, sequence_length // 2) if min_chunk_size is None else min_chunk_size
        always_skip_size = min(128, sequence_length // 8) if always_skip_size is None else always_skip_size
        return cls(sequence_length, min_chunk_size, always_skip_size, seed)

    def __post_init__(self) -> None:
        if not 0 <= self.always_skip_size <= self.min_chunk_size <= self.sequence_length - 2:
            raise ConfigError(
                f"chunk sizes must satisfy 0 <= always_skip_size ({self.always_skip_size}) <= "
                f"min_chunk_size ({self.min_chunk_size}) <= sequence_length - 2 "
                f"({self.sequence_length - 2}); change --always-skip-size / --min-chunk-size."
            )

    @property
    def piece(self) -> int:
        """Body tokens of a full chunk (the framing takes the other two)."""
        return self.sequence_length - 2

    def counts(self, body_lengths: numpy.ndarray) -> numpy.ndarray:
        """Chunks of each document (body lengths > 0, an array or one int); the backfill moves tokens,
        never chunks."""
        full, rest = divmod(body_lengths, self.piece)  # plain ints stay plain: pieces() asks per chunk
        return full + ((rest > 0) & ((full == 0) | (rest >= self.always_skip_size)))

    def dropped(self, body_lengths: numpy.ndarray) -> numpy.ndarray:
        """Tokens of each document the always-skip rule drops (its short last piece)."""
        full, rest = numpy.divmod(body_lengths, self.piece)
        return numpy.where((full > 0) & (rest < self.always_skip_size), rest, 0)

    def _backfilled(self, full, rest):
        """Whether a body of ``full`` whole pieces and ``rest`` more tokens has its last piece
        backfilled (arrays or plain ints)."""
        return (full > 0) & (rest >= self.always_skip_size) & (rest < self.min_chunk_size) & (rest > 0)

    def shifts(self, body_lengths: numpy.ndarray, documents: numpy.ndarray) -> numpy.ndarray:
        """Tokens the backfill moves into each document's last chunk (0 where it does not apply)."""
        full, rest = numpy.divmod(body_lengths, self.piece)
        backfilled = self._backfilled(full, rest)
        draw = splitmix64(splitmix64(numpy.asarray(documents)) + numpy.uint64(self.seed))
        span = numpy.maximum(self.piece - rest, 1).astype(numpy.uint64)
        return numpy.where(backfilled, draw % span, 0).astype(body_lengths.dtype)

    def chunk_lengths(self, body_lengths: numpy.ndarray, documents: numpy.ndarray, counts: numpy.ndarray) -> numpy.ndarray:
        """Body tokens of every chunk of the documents (their ``counts(body_lengths)``), in order (one
        flat int32 array)."""
        ends = numpy.cumsum(counts, dtype=numpy.int64)
        lengths = numpy.full(int(ends[-1]) if len(ends) else 0, self.piece, dtype=numpy.int32)
        full, rest = numpy.divmod(body_lengths, self.piece)
        kept = (rest > 0) & (counts > full)
        lengths[ends[kept] - 1] = rest[kept]
        # the backfill, hashed only for the documents it applies to (a few: the hash is most of the cost)
        moved = numpy.flatnonzero(self._backfilled(full, rest))
        shift = self.shifts(body_lengths[moved], numpy.asarray(documents)[moved])
        lengths[ends[moved] - 1] += shift
        lengths[ends[moved] - 2] -= shift
        return lengths

    def span(self, body_length: int, document: int, chunk: int) -> Tuple[int, int]:
        """(offset in the body, length) of one chunk of one document."""
        full, rest = divmod(body_length, self.piece)
        shift = 0  # the hash is only computed for a document whose last two chunks it changes
        if chunk >= full - 1 and self._backfilled(full, rest):
            shift = int(self.shifts(numpy.array([body_length]), numpy.array([document]))[0])
        if chunk < full:
            return chunk * self.piece, self.piece - (shift if chunk == full - 1 else 0)
        return full * self.piece - shift, rest + shift


def stored_framing(dataset, cls_id: int, sep_id: int, probes: int = 1024) -> Tuple[int, int]:
    """(leading, trailing) framing tokens every stored document carries: (1, 1) for
    ``[CLS] body [SEP]`` (tools/preprocess_data.py), (0, 1) for Megatron-LM's ``body [EOD]`` with
    EOD = [SEP], (0, 0) for bare bodies. Read from up to `probes` documents spread over the prefix
    (2 tokens each: reading every document's ends of a 2B-document corpus would read all of it), with
    plain reads rather than the memory maps, whose fault-around would map 64 KB around each token
    (index_file.py); a prefix whose documents disagree is refused, since a body would be cut or
    framed wrongly."""
    lengths, index = dataset.sequence_lengths, dataset.index
    size = numpy.dtype(index.dtype).itemsize
    with IndexFile(dataset) as idx, open(get_bin_path(dataset.path_prefix), "rb") as data:
        picked = numpy.arange(0, len(lengths), max(1, len(lengths) // probes))[:probes]
        ends = [(int(idx.read(index.sequence_pointers, d)[0]), int(idx.read(lengths, d)[0])) for d in picked]
        ends = [(pointer, length) for pointer, length in ends if length > 0]
        read = lambda pointer, position: numpy.frombuffer(
            os.pread(data.fileno(), size, pointer + position * size), index.dtype)[0]
        heads = [read(pointer, 0) == cls_id for pointer, _ in ends]
        tails = [read(pointer, length - 1) == sep_id for pointer, length in ends]
    if len(set(heads)) > 1 or len(set(tails)) > 1:
        raise ConfigError(
            f"{dataset.path_prefix}: some documents start with [CLS] ({cls_id}) / end with [SEP] ({sep_id}) "
            "and others do not; preprocess all of them the same way (tools/preprocess_data.py)."
        )
    return int(bool(heads) and heads[0]), int(bool(tails) and tails[0])
