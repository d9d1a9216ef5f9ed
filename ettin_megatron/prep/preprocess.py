"""Text shards -> Megatron indexed datasets ({prefix}_{key}_{document|sentence}.bin/.idx).

The pipeline is: the main process cuts the input into bounded chunks of raw lines (readers.py),
worker processes parse, validate and tokenize whole chunks with the Rust tokenizer's batch API, and the
main process writes the results in input order with megatron-core's IndexedDatasetBuilder. Because
chunks are cut independently of the worker count and results are consumed in submission order, the
output bytes do not depend on --workers; because at most a few chunks are in flight, memory does not
grow with the corpus (only the index, a few bytes per document, does, as in Megatron-LM).

Rules the acceptance tests pin down:
- A document whose text is empty or whitespace-only is skipped and counted ("empty"), per key, as
  Megatron-LM drops documents without tokens. Other text is tokenized exactly as given (not stripped).
- By default a document is wrapped by the tokenizer's own template ([CLS] ... [SEP] for ModernBERT);
  `wrap=False` stores the bare tokens (Megatron-LM's layout), and `append_eod` then adds [SEP].
- Sentence mode: each sentence is one sequence of the document; the template's prefix ([CLS]) goes on
  the first sentence and its suffix ([SEP], then the EOD if asked) on the last.
- Outputs are written under temporary names and renamed only after every file is finalized; on any
  error (and on SIGTERM / SIGINT in tools/preprocess_data.py) they are removed, so an interrupted run
  never leaves a complete-looking .bin/.idx pair.
- Beside each pair goes its record, {prefix}.meta.json (dataset_info.py): the tokenizer's fingerprint
  and size, the framing, the counts and the largest id, which training checks before any compute.
"""

import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import chain
from multiprocessing import get_context
from typing import Dict, List, Sequence

import numpy as np
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
from tokenizers import Tokenizer

from ettin_megatron.cli import check_writable
from ettin_megatron.data.dataset_info import DatasetInfo, TokenizerStamp, write_info
from ettin_megatron.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from ettin_megatron.errors import InputError
from ettin_megatron.files import publish, remove_temps, temp_paths
from ettin_megatron.prep import mds, readers
from ettin_megatron.prep.framing import FRAMINGS, eod_id, frame, wrap_ids
from ettin_megatron.prep.sentences import sentence_splitter

log = logging.getLogger(__name__)


@dataclass
class PreprocessConfig:
    """What tools/preprocess_data.py passes; field names follow Megatron-LM's flags."""

    input: str
    output_prefix: str
    tokenizer_model: str
    json_keys: Sequence[str] = ("text",)
    append_eod: bool = False
    split_sentences: bool = False
    keep_newlines: bool = False
    wrap: bool = True
    workers: int = 1
    chunk_size: int = 1000
    log_interval: int = 10000
    skip_invalid: bool = False
    ids_framing: str = "keep"
    split_special_tokens: bool = True
    """A special token's string in raw text ("[MASK]" in a web page) is encoded as text (transformers'
    split_special_tokens); False: as the special token, Megatron-LM's behaviour, for byte identity."""


@dataclass
class Summary:
    """What a run did. `records` counts valid input records (MDS: samples); `documents`, `sentences`,
    `tokens` and `empty` are summed over the json keys; `invalid` counts skipped records and unreadable
    files (MDS: skipped shards); `outputs` maps each key to its dataset prefix."""

    outputs: Dict[str, str] = field(default_factory=dict)
    records: int = 0
    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    empty: int = 0
    invalid: int = 0
    input_bytes: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        secs = max(self.seconds, 1e-9)
        return (
            f"{self.records} records -> {self.documents} documents, {self.tokens} tokens "
            f"({self.tokens / secs:,.0f} tokens/s, {self.input_bytes / secs / 1e6:.2f} MB/s) "
            f"in {self.seconds:.1f}s; skipped "
            f"{self.empty} empty and {self.invalid} invalid; wrote "
            + ", ".join(f"{p}.bin/.idx" for p in self.outputs.values())
        )


def output_prefix(config: PreprocessConfig, key: str) -> str:
    """Megatron-LM's naming: {output_prefix}_{key}_{document|sentence}."""
    level = "sentence" if config.split_sentences else "document"
    return f"{config.output_prefix}_{key}_{level}"


# ---------------------------------------------------------------- worker side (one per process)

_WORKER: dict = {}


def _init_worker(tokenizer: Tokenizer, config: PreprocessConfig, dtype: type) -> None:
    """Set up a worker. Under fork the tokenizer is inherited, not reloaded (loading ModernBERT's
    costs ~0.2 s a process); under spawn it travels pickled. The Rust tokenizer is single-threaded:
    the parallelism is the worker processes, so --workers N uses N cores and runs stay comparable."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process ends us
    tokenizer.encode_special_tokens = config.split_special_tokens  # the template still adds [CLS] / [SEP]
    prefix, suffix = document_frame(tokenizer, config)
    split = sentence_splitter(config.keep_newlines, quiet=True) if config.split_sentences else None
    _WORKER.update(tokenizer=tokenizer, config=config, dtype=dtype, split=split,
                   prefix=list(prefix), suffix=list(suffix), ids_frame=ids_frame(tokenizer, config))


def document_frame(tokenizer: Tokenizer, config: PreprocessConfig) -> tuple:
    """(ids before, ids after) each document: the template's, then the EOD if asked."""
    prefix, suffix = wrap_ids(tokenizer) if config.wrap else ((), ())
    if config.append_eod:
        suffix = suffix + (eod_id(tokenizer),)
    return prefix, suffix


def ids_frame(tokenizer: Tokenizer, config: PreprocessConfig) -> tuple:
    """(template prefix, template suffix, EOD) that --ids-framing applies to token-id columns."""
    prefix, suffix = wrap_ids(tokenizer) if config.ids_framing != "keep" else ((), ())
    return prefix, suffix, (eod_id(tokenizer),) if config.append_eod else ()


@dataclass
class EncodedKey:
    """One key's tokens for one chunk: flat tokens, the length of each sequence, sequences per doc."""

    tokens: np.ndarray
    lengths: np.ndarray
    seqs_per_doc: np.ndarray
    empty: int


def encode_chunk(chunk: readers.Chunk) -> tuple:
    """Parse, validate and tokenize one chunk.

    Returns ({key: EncodedKey}, valid records, [(line, error)], input bytes)."""
    docs, errors = readers.parse_chunk(chunk, _WORKER["config"].json_keys)
    encoded = {}
    for key in _WORKER["config"].json_keys:
        texts = [texts[key] for _, texts in docs if texts[key].strip()]
        encoded[key] = _encode_texts(texts, empty=len(docs) - len(texts))
    return encoded, len(docs), errors, chunk.nbytes


def encode_shard(shard: mds.Shard) -> tuple:
    """Read one MDS shard: `str` columns are tokenized as JSONL text is; `ndarray` columns hold token
    ids, which are copied (checked against the vocabulary, framed per --ids-framing), one document
    per sample. Anything wrong makes the whole shard invalid: ([(0, error)], nothing encoded).

    Returns the same tuple as encode_chunk."""
    config, encoded = _WORKER["config"], {}
    try:
        mds.check_shard(shard)
        raw = mds.read_shard(shard)
        for key in config.json_keys:
            if shard.encoding(key) == "str":
                texts = [text for text in mds.texts(shard, raw, key) if text.strip()]
                encoded[key] = _encode_texts(texts, empty=shard.samples - len(texts))
            else:
                encoded[key] = _copy_ids(shard, *mds.token_ids(shard, raw, key))
    except InputError as exc:
        return {}, 0, [(0, str(exc))], 0
    return encoded, shard.samples, [], shard.raw_bytes


def _copy_ids(shard: mds.Shard, ids: np.ndarray, lengths: np.ndarray) -> EncodedKey:
    tokenizer = _WORKER["tokenizer"]
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    bad = np.flatnonzero((ids >= vocab) | (ids < 0) if ids.dtype.kind == "i" else ids >= vocab)
    if len(bad):
        sample = int(np.searchsorted(np.cumsum(lengths), bad[0], "right"))
        raise InputError(f"{shard.path}: sample {sample} holds token id {ids[bad[0]]}, outside the "
                         f"tokenizer's vocabulary of {vocab} (wrong --tokenizer-model?)")
    prefix, suffix, eod = _WORKER["ids_frame"]
    ids, lengths = frame(ids, lengths, _WORKER["config"].ids_framing, prefix, suffix, eod=eod)
    empty = int(np.count_nonzero(lengths == 0))
    lengths = lengths[lengths > 0]
    return EncodedKey(ids.astype(_WORKER["dtype"]), lengths, np.ones(len(lengths), np.int64), empty)


def _encode_texts(texts: List[str], empty: int) -> EncodedKey:
    tokenizer, split = _WORKER["tokenizer"], _WORKER["split"]
    prefix, suffix = _WORKER["prefix"], _WORKER["suffix"]
    if split is None:
        pieces, seqs_per_doc = texts, [1] * len(texts)
    else:
        per_doc = [split(text) or [text] for text in texts]
        pieces = [s for sentences in per_doc for s in sentences]
        seqs_per_doc = [len(sentences) for sentences in per_doc]
    ids = [e.ids for e in tokenizer.encode_batch_fast(pieces, add_special_tokens=False)]
    first = 0
    for count in seqs_per_doc:
        ids[first] = prefix + ids[first]
        ids[first + count - 1] = ids[first + count - 1] + suffix
        first += count
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    tokens = np.fromiter(chain.from_iterable(ids), dtype=_WORKER["dtype"], count=int(lengths.sum()))
    return EncodedKey(tokens, lengths, np.asarray(seqs_per_doc, dtype=np.int64), empty)


# ---------------------------------------------------------------- main process

def preprocess(config: PreprocessConfig) -> Summary:
    """Tokenize `config.input` into one indexed dataset per json key; return what was done.

    Raises InputError (one line, `path:line: what is wrong (hint)`) for bad arguments, before any
    work starts, and for bad data unless `skip_invalid`, in which case bad records are counted.
    """
    paths, tokenizer = _validate(config)
    dtype = DType.optimal_dtype(tokenizer.get_vocab_size(with_added_tokens=True))
    if config.split_sentences:
        sentence_splitter(config.keep_newlines)  # warns once here if punkt data is missing
    summary = Summary(outputs={key: output_prefix(config, key) for key in config.json_keys})
    temps = {key: temp_paths(prefix) for key, prefix in summary.outputs.items()}
    progress = _Progress(config.log_interval, _plain_size(paths))
    kinds = mds.column_kinds(paths, config.json_keys, missing_ok=True) if _is_mds(paths) else {}
    infos = {key: _new_info(config, tokenizer, kinds.get(key, "text")) for key in temps}
    try:
        builders = {key: IndexedDatasetBuilder(temps[key][0], dtype=dtype) for key in temps}
        chunks = _encoded_chunks(config, paths, tokenizer, dtype)
        with contextlib.closing(chunks):
            for encoded, records, errors, nbytes in chunks:
                _count_errors(errors, config.skip_invalid, summary)
                for key, enc in encoded.items():
                    _write(builders[key], enc, summary)
                    infos[key].count(enc.tokens, len(enc.seqs_per_doc), len(enc.lengths))
                summary.records += records
                summary.input_bytes += nbytes
                progress.update(summary)
        if not summary.documents:
            raise InputError(f"{config.input}: no documents (no records, or only empty texts); nothing written")
        for key, builder in builders.items():
            builder.finalize(temps[key][1])
            write_info(temps[key][2], infos[key])
        for key, prefix in summary.outputs.items():
            publish(temps[key], prefix)
    except BrokenProcessPool as exc:
        remove_temps(*temps.values())
        raise InputError("a worker process died (killed, or out of memory); no output written") from exc
    except BaseException:
        remove_temps(*temps.values())
        raise
    summary.seconds = progress.elapsed()
    return summary


def _new_info(config: PreprocessConfig, tokenizer: Tokenizer, kind: str) -> DatasetInfo:
    """The record of one output (`kind`: "text", or "ids" for an MDS token-id column), before any
    document is counted. For ids, `prefix`/`suffix` are what --ids-framing guarantees (nothing is
    known of the source's own framing under `keep`)."""
    prefix, suffix = document_frame(tokenizer, config)
    stamp = TokenizerStamp(tokenizer_fingerprint(config.tokenizer_model),
                           tokenizer.get_vocab_size(with_added_tokens=True))
    framing = dict(wrap=config.wrap, append_eod=config.append_eod, prefix=list(prefix), suffix=list(suffix),
                   split_special_tokens=config.split_special_tokens)
    if kind == "ids":
        prefix, suffix, eod = ids_frame(tokenizer, config)
        framing = dict(ids_framing=config.ids_framing, append_eod=config.append_eod, prefix=list(prefix),
                       suffix=list(suffix if config.ids_framing == "wrap" else eod))
    level = "sentence" if config.split_sentences else "document"
    return DatasetInfo(stamp, framing, level, tool="tools/preprocess_data.py")


def _validate(config: PreprocessConfig):
    """Every mistake a user can make in the arguments, reported before any work starts."""
    if not config.json_keys:
        raise InputError("--json-keys: give at least one key")
    if config.workers < 1 or config.chunk_size < 1:
        raise InputError("--workers and --chunk-size must be at least 1")
    if config.append_eod and config.wrap:
        raise InputError(
            "--append-eod: documents already end with the template's [SEP]; add --no-wrap for "
            "Megatron-LM's layout (bare tokens + EOD)"
        )
    if mds.is_mds(config.input):
        paths = _validate_mds(config)
    else:
        paths = readers.expand_inputs(config.input)
        for path in paths:  # a cheap look at each file; fails early without zstandard
            problem = readers.file_problem(path, config.json_keys)
            if problem and not config.skip_invalid:  # else reading finds it again: skipped and counted
                raise _invalid(problem)
    try:
        tokenizer = load_tokenizer(config.tokenizer_model)
        if config.wrap or config.ids_framing != "keep":
            wrap_ids(tokenizer)
        if config.append_eod:
            eod_id(tokenizer)
    except ValueError as exc:  # TokenizerNotFound, or a template wrap_ids cannot follow
        raise InputError(f"--tokenizer-model {exc}") from exc
    out_dir = os.path.dirname(os.path.abspath(config.output_prefix))
    check_writable(out_dir, "--output-prefix")
    os.makedirs(out_dir, exist_ok=True)
    return paths, tokenizer


def _validate_mds(config: PreprocessConfig) -> List[mds.Shard]:
    shards = mds.find_shards(config.input)
    if not config.skip_invalid:  # else encode_shard finds them, and they are skipped and counted
        for shard in shards:
            mds.check_shard(shard)
    kinds = mds.column_kinds(shards, config.json_keys, missing_ok=config.skip_invalid)
    if config.ids_framing not in FRAMINGS:
        raise InputError(f"--ids-framing: {config.ids_framing!r} is not one of {', '.join(FRAMINGS)}")
    if "ids" in kinds.values() and config.append_eod and config.ids_framing != "strip":
        raise InputError("--append-eod on token-id columns needs --ids-framing strip (else documents "
                         "would end with both the template's [SEP] and the EOD)")
    if "ids" in kinds.values() and config.split_sentences:
        raise InputError("--split-sentences needs text; token-id columns are already tokenized")
    return shards


def _is_mds(paths: list) -> bool:
    return bool(paths) and isinstance(paths[0], mds.Shard)


def _encoded_chunks(config: PreprocessConfig, paths: List[str], tokenizer: Tokenizer, dtype: type):
    """Yield encode_chunk (encode_shard for MDS) results in input order with at most ~2 chunks (shards)
    per worker in flight."""
    context = get_context("fork" if sys.platform == "linux" else "spawn")
    init = (tokenizer, config, dtype)
    with ProcessPoolExecutor(config.workers, context, _init_worker, init) as pool:
        pending = deque()
        try:
            if _is_mds(paths):
                work = ((encode_shard, shard) for shard in paths)
            else:
                chunks = readers.iter_chunks(paths, config.json_keys, config.chunk_size)
                work = ((encode_chunk, chunk) for chunk in chunks)
            for function, item in work:
                pending.append(pool.submit(function, item))
                if len(pending) >= 2 * config.workers + 1:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _invalid(problem: str) -> InputError:
    """The error that stops a run at invalid input (a bad record, shard or file) without --skip-invalid."""
    return InputError(f"{problem} (fix the input or pass --skip-invalid)")


def _count_errors(errors: list, skip_invalid: bool, summary: Summary) -> None:
    if errors and not skip_invalid:
        raise _invalid(errors[0][1])
    for _, message in errors[: max(0, 5 - summary.invalid)]:
        log.warning("skipped %s", message)
    summary.invalid += len(errors)


def _write(builder: IndexedDatasetBuilder, enc: EncodedKey, summary: Summary) -> None:
    """Append one chunk's documents, in order, to one key's dataset: what the builder's add_document
    does per document, once per chunk (a per-document call would cap the copy of MDS token ids)."""
    summary.empty += enc.empty
    summary.documents += len(enc.seqs_per_doc)
    summary.tokens += len(enc.tokens)
    summary.sentences += len(enc.lengths)
    builder.data_file.write(np.asarray(enc.tokens, dtype=builder.dtype).tobytes(order="C"))
    first = len(builder.sequence_lengths)
    builder.sequence_lengths.extend(enc.lengths.tolist())
    builder.document_indices.extend((first + np.cumsum(enc.seqs_per_doc)).tolist())


def _plain_size(paths: List[str]):
    """Total input bytes when every file is uncompressed JSONL or an MDS shard (whose raw size its
    index gives), so that an ETA is exact; else None."""
    if _is_mds(paths):
        return sum(p.raw_bytes for p in paths)
    if all(p.endswith((".jsonl", ".json")) for p in paths):
        return sum(os.path.getsize(p) for p in paths)
    return None


class _Progress:
    """Prints documents/s, tokens/s, MB/s (and an ETA when the input size is known) to stderr
    every `interval` documents."""

    def __init__(self, interval: int, total_bytes=None):
        self.interval, self.start, self.next = interval, time.perf_counter(), interval
        self.total_bytes = total_bytes

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def update(self, summary: Summary) -> None:
        if self.interval <= 0 or summary.records < self.next:
            return
        self.next = (summary.records // self.interval + 1) * self.interval
        secs = max(self.elapsed(), 1e-9)
        rate = summary.input_bytes / secs
        eta = ""
        if self.total_bytes and rate:
            eta = f" | ETA {max(0.0, self.total_bytes - summary.input_bytes) / rate:,.0f}s"
        print(
            f"[preprocess] {summary.records:,} docs | {summary.records / secs:,.0f} docs/s | "
            f"{summary.tokens / secs:,.0f} tokens/s | {rate / 1e6:.2f} MB/s{eta}",
            file=sys.stderr,
            flush=True,
        )
