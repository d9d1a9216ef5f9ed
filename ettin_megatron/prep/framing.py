"""Framing of already tokenized documents: the template's [CLS] ... [SEP] added, kept or removed.

Training expects every document as the tokenizer's template frames it ([CLS] body [SEP] for
ModernBERT), which is how tools/preprocess_data.py writes text by default. Token ids that arrive
already tokenized (Ettin's MDS shards) may or may not carry that framing, so --ids-framing says what to
do: `keep` copies the ids unchanged, `wrap` adds the template's ids where a document lacks them,
`strip` removes them where present (Megatron-LM's bare layout; --append-eod then ends each document
with the EOD id). All of it is vectorized over a batch of documents: (flat ids, length per document).
"""

from typing import Sequence, Tuple

import numpy as np
from tokenizers import Tokenizer

from ettin_megatron.errors import TokenizerNotFound

FRAMINGS = ("keep", "wrap", "strip")


def frame(ids: np.ndarray, lengths: np.ndarray, mode: str, prefix: Sequence[int], suffix: Sequence[int],
          eod: Sequence[int] = ()) -> Tuple[np.ndarray, np.ndarray]:
    """Apply `mode` to the documents (`lengths` > 0); returns the new (ids, lengths). `eod` (with
    `strip`) is appended to every document. A document left empty by `strip` keeps length 0: the
    caller drops it, as preprocessing drops documents without tokens."""
    if mode == "keep":
        return ids, lengths
    starts = np.cumsum(lengths) - lengths
    ends = starts + lengths
    has_prefix = _matches(ids, starts, prefix, lengths >= len(prefix))
    has_suffix = _matches(ids, ends - len(suffix), suffix, lengths >= len(suffix) + has_prefix * len(prefix))
    if mode == "wrap":
        return _insert(ids, lengths, ~has_prefix, prefix, ~has_suffix, suffix)
    if mode != "strip":
        raise ValueError(f"framing {mode!r} is not one of {FRAMINGS}")
    keep = np.ones(len(ids), np.bool_)
    keep[(starts[has_prefix, None] + np.arange(len(prefix))).ravel()] = False
    keep[(ends[has_suffix, None] - len(suffix) + np.arange(len(suffix))).ravel()] = False
    lengths = lengths - has_prefix * len(prefix) - has_suffix * len(suffix)
    ids = ids[keep]
    if eod:
        everywhere = np.ones(len(lengths), np.bool_)
        ids, lengths = _insert(ids, lengths, ~everywhere, (), everywhere, eod)
    return ids, lengths


def _matches(ids: np.ndarray, at: np.ndarray, pattern: Sequence[int], possible: np.ndarray) -> np.ndarray:
    """Whether each document holds `pattern` at position `at` (where `possible` says it fits)."""
    found = possible.copy()
    for k, token in enumerate(pattern):
        found[found] &= ids[at[found] + k] == token
    return found


def _insert(ids, lengths, add_prefix, prefix, add_suffix, suffix):
    """Insert `prefix` before the documents where `add_prefix` and `suffix` after those where
    `add_suffix`. Where one document ends and the next starts at the same position, the suffix must
    come first: suffixes are listed first and np.insert keeps the given order for equal positions
    (which is why an empty document cannot get both: `wrap` never sees one)."""
    ends = np.cumsum(lengths)
    starts = ends - lengths
    where = np.concatenate([np.repeat(ends[add_suffix], len(suffix)), np.repeat(starts[add_prefix], len(prefix))])
    values = np.concatenate([np.tile(np.asarray(suffix, ids.dtype), int(add_suffix.sum())),
                             np.tile(np.asarray(prefix, ids.dtype), int(add_prefix.sum()))])
    return np.insert(ids, where, values), lengths + add_prefix * len(prefix) + add_suffix * len(suffix)


def eod_id(tokenizer: Tokenizer) -> int:
    """The end-of-document id --append-eod adds: [SEP] (Ettin's EOS, and what Megatron-LM appends with
    the ModernBERT tokenizer), else a GPT-style end-of-text token."""
    for token in ("[SEP]", "<|endoftext|>", "</s>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise TokenizerNotFound("tokenizer has no end-of-document token ([SEP], <|endoftext|> or </s>)")


def wrap_ids(tokenizer: Tokenizer) -> tuple:
    """The ids the tokenizer's own post-processor puts before and after a single sequence.

    Found by encoding a probe with and without special tokens, so it follows whatever template the
    tokenizer carries (`[CLS] $A [SEP]` for ModernBERT, nothing for GPT-2 style tokenizers). Sentence
    mode needs it to wrap a document whose sentences are tokenized separately.
    """
    bare = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return tuple(full[:start]), tuple(full[start + len(bare) :])
    raise ValueError("the tokenizer's post-processor rewrites the sequence; use --no-wrap")
