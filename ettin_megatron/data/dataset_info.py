"""What made a dataset, recorded beside it, and the checks that data, tokenizer and model agree.

tools/preprocess_data.py and tools/merge_datasets.py write ``<prefix>.meta.json`` next to each
``<prefix>.bin/.idx``: the tokenizer (a fingerprint of its JSON content, not its path, and its size),
how documents are framed, the counts and the largest token id. Training (training/arguments.validate)
calls :func:`check_dataset` on every prefix of --data-path / --data-mix before any process group or
compute, and refuses in one line:

- a prefix made with another tokenizer than --tokenizer-model (without --tokenizer-model, training
  assumes ModernBERT's ids, so a record of a tokenizer of another size is refused too);
- a prefix holding a token id the model's vocabulary does not have. The embedding would raise an
  IndexError deep in the forward at TP=1, a device-side assert on a GPU, and at TP>1 megatron's
  vocab-parallel embedding gives an id outside every shard a zero vector: the run trains on garbage.
- a record that does not describe the files beside it (they were rewritten by another tool).

Prefixes from Megatron-LM's own tool have no record and still train. Their largest id is read from a
sample: :data:`SAMPLE_WINDOWS` windows of :data:`WINDOW_TOKENS` tokens spread evenly over the .bin
(the whole file when it is smaller), at most 16M tokens (32 MB of uint16) per prefix whatever the
corpus size, where a full scan of a 2T-token corpus would read 4 TB at every launch. Data made with a
larger tokenizer has out-of-range ids in a large share of its tokens, which the sample finds; a rare
one that escapes it is stopped by the model's own check of every batch (model/ettin_model.py). Only
a record can tell that a smaller tokenizer with the same ids range made the data.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import List, Optional

import numpy
from megatron.core.datasets.indexed_dataset import IndexedDataset

from ettin_megatron import __version__
from ettin_megatron.errors import ConfigError, InputError
from ettin_megatron.files import RECORD_SUFFIX, write_json

FORMAT = "ettin-megatron dataset"
SAMPLE_WINDOWS = 64
WINDOW_TOKENS = 1 << 18


@dataclass(frozen=True)
class TokenizerStamp:
    """What a dataset records of its tokenizer: data/tokenizer.tokenizer_fingerprint and the size
    counting added tokens. A run without --tokenizer-model knows only the size (ModernBERT's)."""

    sha256: Optional[str]
    vocab_size: int

    def __str__(self) -> str:
        """As messages name a tokenizer: its size and the start of its fingerprint."""
        return f"{self.vocab_size} tokens" + (f", sha256 {self.sha256[:12]}" if self.sha256 else "")


@dataclass
class DatasetInfo:
    """The record of one prefix. ``framing`` is how preprocessing framed each document: ``wrap`` (the
    tokenizer's template around it), ``append_eod``, and the ids that go before and after it."""

    tokenizer: TokenizerStamp
    framing: dict
    level: str
    tool: str
    documents: int = 0
    sequences: int = 0
    tokens: int = 0
    max_token_id: int = -1
    format: str = FORMAT
    version: str = __version__

    def count(self, tokens: numpy.ndarray, documents: int, sequences: int) -> None:
        """Add a batch of written documents."""
        self.documents += documents
        self.sequences += sequences
        self.tokens += len(tokens)
        if len(tokens):
            self.max_token_id = max(self.max_token_id, int(tokens.max()))


def info_path(prefix: str) -> str:
    return prefix + RECORD_SUFFIX


def write_info(path: str, info: DatasetInfo) -> None:
    write_json(path, asdict(info))


def read_info(prefix: str, dataset: Optional[IndexedDataset] = None) -> Optional[DatasetInfo]:
    """The record beside ``prefix``, or None (a Megatron-LM prefix). Raises InputError when it is
    unreadable or describes other files than the .bin/.idx beside it: the counts are compared with
    the index header and the .bin's size, which costs no read of the data."""
    path = info_path(prefix)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
        info = DatasetInfo(**{**data, "tokenizer": TokenizerStamp(**data["tokenizer"])})
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{path}: not a dataset record ({exc}); delete it or re-run "
                         "tools/preprocess_data.py") from exc
    dataset = dataset or IndexedDataset(prefix)
    held = (len(dataset.document_indices) - 1, len(dataset.sequence_lengths),
            os.path.getsize(prefix + ".bin") // dataset.index.dtype_size)
    if held != (info.documents, info.sequences, info.tokens):
        raise InputError(f"{path} describes {info.documents} documents, {info.sequences} sequences and "
                         f"{info.tokens} tokens but {prefix}.bin/.idx hold {held[0]}, {held[1]} and "
                         f"{held[2]} (rewritten by another tool?); delete the record or re-run "
                         "tools/preprocess_data.py")
    return info


def merged_info(infos: List[DatasetInfo], prefixes: List[str], tool: str) -> DatasetInfo:
    """The record of the concatenation of datasets; raises InputError unless they share tokenizer,
    framing and level (merging across them would make a record no single run can check)."""
    first = infos[0]
    for info, prefix in zip(infos, prefixes):
        for name in ("tokenizer", "framing", "level"):
            if getattr(info, name) != getattr(first, name):
                raise InputError(f"{prefix} was made with another {name} than {prefixes[0]} "
                                 f"({getattr(info, name)} vs {getattr(first, name)}); merge only "
                                 "datasets preprocessed alike")
    merged = DatasetInfo(first.tokenizer, first.framing, first.level, tool)
    for info in infos:
        merged.documents += info.documents
        merged.sequences += info.sequences
        merged.tokens += info.tokens
        merged.max_token_id = max(merged.max_token_id, info.max_token_id)
    return merged


def check_complete(prefix: str, dataset: IndexedDataset) -> None:
    """Refuse a .bin shorter than its .idx describes (a copy cut short, files from two runs): its last
    samples would fail mid-run. Read from the index and the file size, no data."""
    index = dataset.index
    expected = int(index.sequence_pointers[-1]) + int(index.sequence_lengths[-1]) * index.dtype_size if len(index) else 0
    held = os.path.getsize(prefix + ".bin")
    if held < expected:
        raise ConfigError(f"{prefix}.bin holds {held} bytes but its .idx describes {expected}: the dataset is "
                          "truncated or its two files do not belong together; copy it again or re-run "
                          "tools/preprocess_data.py.")


def sampled_max_token_id(prefix: str, dataset: IndexedDataset) -> int:
    """The largest token id in a fixed sample of the .bin (all of it when small); -1 when empty."""
    if os.path.getsize(prefix + ".bin") == 0:
        return -1
    tokens = numpy.memmap(prefix + ".bin", dtype=dataset.index.dtype, mode="r")
    if len(tokens) <= SAMPLE_WINDOWS * WINDOW_TOKENS:
        return int(tokens.max())
    starts = numpy.linspace(0, len(tokens) - WINDOW_TOKENS, SAMPLE_WINDOWS).astype(numpy.int64)
    return max(int(tokens[start : start + WINDOW_TOKENS].max()) for start in starts)


def check_dataset(prefix: str, dataset: IndexedDataset, vocab_size: int,
                  tokenizer: Optional[TokenizerStamp], tokenizer_flag: str) -> Optional[DatasetInfo]:
    """Refuse, with one ConfigError line, a prefix the model cannot train on (see module doc); return its
    record (None for a prefix without one).

    ``tokenizer`` is what the run's data must have been made with (None: not known, nothing to
    compare); ``tokenizer_flag`` names it in messages (``--tokenizer-model PATH``)."""
    check_complete(prefix, dataset)
    info = read_info(prefix, dataset)
    if info is not None and tokenizer is not None:
        made = info.tokenizer
        if made.vocab_size != tokenizer.vocab_size or (tokenizer.sha256 and made.sha256 != tokenizer.sha256):
            raise ConfigError(
                f"{prefix} was made with another tokenizer ({made}) than {tokenizer_flag} ({tokenizer}); train "
                "with the tokenizer the data was made with, or re-run tools/preprocess_data.py with this one.")
    top = info.max_token_id if info is not None else sampled_max_token_id(prefix, dataset)
    if top >= vocab_size:
        raise ConfigError(
            f"{prefix} holds token id {top} but the model's vocabulary has {vocab_size} ids: the data "
            f"was made with another tokenizer than {tokenizer_flag}; re-run tools/preprocess_data.py "
            "with the run's tokenizer, or train with the data's (--tokenizer-model / --vocab-size).")
    return info
