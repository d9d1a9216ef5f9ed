"""Look at an indexed dataset by eye: counts, a document-length histogram and decoded samples.

Read with megatron-core's IndexedDataset (the same reader training uses), so what this shows is what
the model will see, special tokens included.
"""

from typing import List, Optional

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset
from tokenizers import Tokenizer

from ettin_megatron.data.dataset_info import read_info
from ettin_megatron.data.index_file import existing_dataset, open_dataset

HISTOGRAM_WIDTH = 40


def document_lengths(dataset: IndexedDataset) -> np.ndarray:
    """Tokens per document (a document may hold several sequences in sentence mode)."""
    ends = np.cumsum(dataset.sequence_lengths, dtype=np.int64)
    bounds = dataset.document_indices
    totals = np.concatenate([[0], ends])[bounds]
    return np.diff(totals)


def inspect_dataset(
    prefix: str,
    tokenizer: Optional[Tokenizer] = None,
    samples: int = 3,
    max_chars: int = 400,
    seed: Optional[int] = None,
) -> str:
    """Return a human-readable report; samples are the first documents, or random ones with `seed`.

    Without a tokenizer the samples are shown as token ids.
    """
    prefix = existing_dataset(prefix)
    dataset = open_dataset(prefix)
    lengths = document_lengths(dataset)
    lines = [
        f"dataset   {prefix}",
        f"dtype     {dataset.index.dtype.__name__}",
        f"documents {len(lengths):,}",
        f"sequences {len(dataset):,}",
        f"tokens    {int(lengths.sum()):,}",
    ]
    info = read_info(prefix, dataset)
    if info is not None:
        lines += [
            f"tokenizer sha256 {info.tokenizer.sha256[:16]}, {info.tokenizer.vocab_size:,} tokens",
            f"framing   {info.framing['prefix']} + text + {info.framing['suffix']} per document ({info.level} level); "
            f"max token id {info.max_token_id}",
            f"made by   {info.tool} (ettin-megatron {info.version})",
        ]
    if len(lengths):
        lines.append(
            f"doc len   min {lengths.min()} | mean {lengths.mean():.1f} | "
            f"median {int(np.median(lengths))} | max {lengths.max()}"
        )
        lines += ["", "document length histogram (tokens)"] + _histogram(lengths)
        lines += ["", "samples"] + _samples(dataset, tokenizer, samples, max_chars, seed)
    return "\n".join(lines)


def _histogram(lengths: np.ndarray) -> List[str]:
    """Power-of-two buckets: [1, 2), [2, 4), ... so short and 8k-token documents fit one screen."""
    exponents = np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    counts = np.bincount(exponents)
    peak = counts.max()
    rows = []
    for exp, count in enumerate(counts):
        if count:
            bar = "#" * max(1, round(HISTOGRAM_WIDTH * count / peak))
            rows.append(f"  [{2**exp:>7}, {2**(exp + 1):>7}) {count:>10,} {bar}")
    return rows


def _samples(dataset, tokenizer, samples, max_chars, seed) -> List[str]:
    documents = len(dataset.document_indices) - 1
    count = min(samples, documents)
    if seed is None:
        chosen = range(count)
    else:
        chosen = sorted(np.random.default_rng(seed).choice(documents, count, replace=False).tolist())
    rows = []
    for doc in chosen:
        first, last = dataset.document_indices[doc], dataset.document_indices[doc + 1]
        ids = np.concatenate([dataset[i] for i in range(first, last)]).tolist()
        text = tokenizer.decode(ids, skip_special_tokens=False) if tokenizer else str(ids)
        shown = text if len(text) <= max_chars else text[:max_chars] + " ..."
        rows.append(f"--- document {doc} ({len(ids)} tokens, {last - first} sequences)")
        rows.append(shown)
    return rows
