"""Streaming input: expand --input, read JSONL (plain, .gz, .zst) and Parquet in bounded chunks.

The main process only cuts the input into chunks of raw records (undecoded JSONL lines, or Parquet
rows); parsing and validation happen in the workers (`parse_chunk`), so the main process never becomes
the bottleneck. A JSONL chunk ends after `chunk_size` lines or once it holds CHUNK_BYTES (so a few huge
documents do not leave one worker with all the work), a Parquet chunk after `chunk_size` rows, and no
chunk spans two files: the chunking, and therefore the output, depends on the input only, never on
the number of workers.

A file that cannot be read as its name says (a corrupt Parquet file, plain text named .jsonl.gz, a
file cut short) is invalid input like a bad record: `file_problem` sees what a cheap look shows (a
Parquet footer, the first block of a compressed file), so that preprocessing can refuse it before
any work, and `iter_chunks` gives an error chunk in place of what a file could not give, which the
workers report as they report a bad record.
"""

import glob
import gzip
import io
import json
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from ettin_megatron.errors import InputError, one_line

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES

#: A JSONL chunk closes once its lines reach this many bytes: small enough to balance the workers on
#: corpora with very uneven documents, large enough that per-chunk overhead stays negligible.
CHUNK_BYTES = 256 * 1024


@dataclass
class Chunk:
    """Consecutive records of one file; `first_line` is the 1-based line (JSONL)
    or row (Parquet) number of records[0]. JSONL records are raw bytes, Parquet ones dicts.
    A chunk with an `error` has no records: the file could not be read from `first_line` on (0: at all)."""

    path: str
    first_line: int
    records: List[Union[bytes, dict]]
    error: Optional[str] = None

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
        expected = f"a file, a glob or a directory of {', '.join(SUFFIXES)} files"
        if os.path.isdir(spec):
            raise InputError(f"{spec}: the directory holds no input file (expected {expected})")
        if glob.has_magic(spec):
            raise InputError(f"{spec}: no file matches (expected {expected})")
        raise InputError(f"{spec} does not exist (expected {expected})")
    for path in paths:
        if not path.endswith(SUFFIXES):
            raise InputError(f"{path}: unknown input format (expected one of {', '.join(SUFFIXES)})")
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


def file_problem(path: str, keys: Sequence[str]) -> Optional[str]:
    """Why `path` cannot give the `keys` texts, in one line, or None, from a cheap look: a Parquet
    file's footer (is it Parquet, has it the columns), the first block of a compressed file (is it
    compressed as its suffix says). What breaks further in is found as the file is read."""
    try:
        if not path.endswith(PARQUET_SUFFIXES):
            with open_binary(path) as f:
                f.read(1)
            return None
        names = _parquet(path).read_schema(path).names
    except InputError:  # not the file's fault: a package to install
        raise
    except Exception as exc:  # pyarrow, gzip, zlib and zstandard each raise their own types
        return _unreadable(path, exc)
    missing = [key for key in keys if key not in names]
    return f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})" if missing else None


def iter_chunks(paths: Sequence[str], keys: Sequence[str], chunk_size: int) -> Iterator[Chunk]:
    """Yield the input as chunks, file by file, holding at most one chunk in memory. A file with a
    `file_problem`, or that breaks while it is read, yields an error chunk in place of what it could
    not give (from the first line or row not given)."""
    for path in paths:
        problem = file_problem(path, keys)
        if problem:
            yield Chunk(path, 0, [], error=problem)
            continue
        if path.endswith(PARQUET_SUFFIXES):
            chunks = _parquet_chunks(path, keys, chunk_size)
        else:
            chunks = _jsonl_chunks(path, chunk_size)
        line = 1
        try:
            for chunk in chunks:
                yield chunk
                line = chunk.first_line + len(chunk.records)
        except Exception as exc:  # as in file_problem
            yield Chunk(path, line, [], error=_unreadable(path, exc, line))


#: What a file is read as, by its name's end (else plain JSONL).
_FORMATS = {".parquet": "Parquet", ".gz": "gzip-compressed JSONL", ".zst": "zstd-compressed JSONL"}


def _unreadable(path: str, exc: Exception, line: int = 0) -> str:
    """The message of a file that could not be read (from `line` on, where given)."""
    form = next((name for suffix, name in _FORMATS.items() if path.endswith(suffix)), "JSONL")
    where = f"{path}:{line}: cannot be read as {form} from here on" if line else f"{path}: cannot be read as {form}"
    return f"{where} ({one_line(exc)})"


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


def _parquet(path: str):
    """pyarrow.parquet (an optional dependency, like zstandard for .zst)."""
    try:
        import pyarrow.parquet
    except ImportError:
        raise InputError(f"{path}: reading .parquet needs the pyarrow package (pip install pyarrow)")
    return pyarrow.parquet


def _parquet_chunks(path: str, keys: Sequence[str], chunk_size: int) -> Iterator[Chunk]:
    first = 1
    for batch in _parquet(path).ParquetFile(path).iter_batches(batch_size=chunk_size, columns=list(keys)):
        rows = batch.to_pylist()
        yield Chunk(path, first, rows)
        first += len(rows)


def parse_chunk(
    chunk: Chunk, keys: Sequence[str]
) -> Tuple[List[Tuple[int, dict]], List[Tuple[int, str]]]:
    """Parse and validate a chunk: return ([(line, {key: text})], [(line, error message)]).

    Blank JSONL lines are ignored (they are not documents). Every other line must be a JSON object
    whose `keys` all hold valid Unicode strings; each violation becomes one `path:line: ...` message,
    as does an error chunk's error.
    """
    if chunk.error:
        return [], [(chunk.first_line, chunk.error)]
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
                errors.append((line, f"{where}: malformed JSON ({exc.msg}: column {exc.colno})"))
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
