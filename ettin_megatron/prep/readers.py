"""Streaming input: expand --input, read JSONL (plain, .gz, .zst) and Parquet in bounded chunks.

The main process only cuts the input into chunks of raw records (undecoded JSONL lines, or Parquet
rows); parsing and validation happen in the workers (`parse_chunk`), so the main process never becomes
the bottleneck. A JSONL chunk ends after `chunk_size` lines or once it holds CHUNK_BYTES (so a few huge
documents do not leave one worker with all the work), a Parquet chunk after `chunk_size` rows, and no
chunk spans two files: the chunking, and therefore the output, depends on the input only, never on
the number of workers.
"""

import glob
import gzip
import io
import json
import os
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple, Union

from ettin_megatron.errors import InputError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES

#: A JSONL chunk closes once its lines reach this many bytes: small enough to balance the workers on
#: corpora with very uneven documents, large enough that per-chunk overhead stays negligible.
CHUNK_BYTES = 256 * 1024


@dataclass
class Chunk:
    """Consecutive records of one file; `first_line` is the 1-based line (JSONL)
    or row (Parquet) number of records[0]. JSONL records are raw bytes, Parquet ones dicts."""

    path: str
    first_line: int
    records: List[Union[bytes, dict]]

    @property
    def nbytes(self) -> int:
        """Input size for the MB/s figure (JSONL: line bytes; Parquet: characters of the values)."""
        if self.records and isinstance(self.records[0], bytes):
            return sum(len(r) for r in self.records)
        return sum(len(str(v)) for r in self.records for v in r.values())


def expand_inputs(spec: str) -> List[str]:
    """--input is a file, a glob or a directory; return the sorted list of input files.

    Sorted so that the output order is the same on every machine; a directory contributes its files
    (recursively) with a known suffix.
    """
    if os.path.isdir(spec):
        pattern = os.path.join(spec, "**", "*")
        paths = [p for p in glob.glob(pattern, recursive=True) if p.endswith(SUFFIXES)]
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        paths = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    if not paths:
        raise InputError(f"{spec}: no input files (expected a file, a glob or a directory of {SUFFIXES})")
    for path in paths:
        if not path.endswith(SUFFIXES):
            raise InputError(f"{path}: unknown input format (expected one of {SUFFIXES})")
    return sorted(paths)


def open_binary(path: str) -> io.BufferedIOBase:
    """Open a JSONL file for binary line reading, decompressing .gz and .zst transparently."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise InputError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)")
        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


def check_parquet_columns(path: str, keys: Sequence[str]) -> None:
    """Fail before any work starts if a Parquet file lacks one of the --json-keys columns."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    for key in keys:
        if key not in names:
            raise InputError(f"{path}: no column {key!r} (columns: {', '.join(names)})")


def iter_chunks(paths: Sequence[str], keys: Sequence[str], chunk_size: int) -> Iterator[Chunk]:
    """Yield the input as chunks, file by file, holding at most one chunk in memory."""
    for path in paths:
        if path.endswith(PARQUET_SUFFIXES):
            yield from _parquet_chunks(path, keys, chunk_size)
        else:
            yield from _jsonl_chunks(path, chunk_size)


def _jsonl_chunks(path: str, chunk_size: int) -> Iterator[Chunk]:
    # Binary lines: split on b"\n" only (text mode would also split on \r, \x1c, \u2028 ...) and
    # leave UTF-8 decoding to the workers, which report invalid bytes with their line number.
    with open_binary(path) as f:
        records, first, size = [], 1, 0
        for lineno, line in enumerate(f, start=1):
            records.append(line)
            size += len(line)
            if len(records) == chunk_size or size >= CHUNK_BYTES:
                yield Chunk(path, first, records)
                records, first, size = [], lineno + 1, 0
        if records:
            yield Chunk(path, first, records)


def _parquet_chunks(path: str, keys: Sequence[str], chunk_size: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    first = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size, columns=list(keys)):
        rows = batch.to_pylist()
        yield Chunk(path, first, rows)
        first += len(rows)


def parse_chunk(
    chunk: Chunk, keys: Sequence[str]
) -> Tuple[List[Tuple[int, dict]], List[Tuple[int, str]]]:
    """Parse and validate a chunk: return ([(line, {key: text})], [(line, error message)]).

    Blank JSONL lines are ignored (they are not documents). Every other line must be a JSON object
    whose `keys` all hold valid Unicode strings; each violation becomes one `path:line: ...` message.
    """
    docs, errors = [], []
    for offset, record in enumerate(chunk.records):
        line = chunk.first_line + offset
        where = f"{chunk.path}:{line}"
        if isinstance(record, bytes):
            if not record.strip():
                continue
            try:
                record = json.loads(record.rstrip(b"\r\n").decode("utf-8"))
            except UnicodeDecodeError as exc:
                errors.append((line, f"{where}: invalid UTF-8 at byte {exc.start} of the line"))
                continue
            except json.JSONDecodeError as exc:
                errors.append((line, f"{where}: malformed JSON ({exc.msg} at column {exc.colno})"))
                continue
            if not isinstance(record, dict):
                errors.append((line, f"{where}: expected a JSON object, got {type(record).__name__}"))
                continue
        texts, problem = {}, None
        for key in keys:
            if key not in record:
                problem = f"missing key {key!r} (keys: {', '.join(map(str, record)) or 'none'})"
            elif not isinstance(record[key], str):
                problem = f"key {key!r} is {type(record[key]).__name__}, expected a string"
            elif not _is_unicode(record[key]):
                problem = f"key {key!r} holds an unpaired surrogate (a \\ud800-\\udfff escape)"
            else:
                texts[key] = record[key]
            if problem:
                errors.append((line, f"{where}: {problem}"))
                break
        else:
            docs.append((line, texts))
    return docs, errors


def _is_unicode(text: str) -> bool:
    """False for strings the tokenizer cannot take: JSON allows lone surrogate escapes."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
