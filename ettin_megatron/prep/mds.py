"""MosaicML Streaming "MDS" shards, read without the `mosaicml-streaming` package.

Ettin's corpus is released as MDS (jhu-clsp/ettin-*-data). The reference package cannot be installed
beside this project (it pins transformers<5 and numpy<2.2 and imports torchvision), and the format is
small, so this module reads it directly; tests check it against shards written by the reference
`MDSWriter` (tests/prep/fixtures/mds).

The format (streaming/base/format/mds in GitHub mosaicml/streaming):
- index.json: {"version": 2, "shards": [...]}; each shard names its file(s) (`raw_data`, and
  `zip_data` when `compression` is set, basenames relative to the index's folder), its `samples`,
  `column_names` / `column_encodings` / `column_sizes` (null for variable-size columns), and the
  `hashes` of each file.
- A raw shard: u32 sample count n, u32 offsets[n + 1] (absolute; the last is the file size), the
  writer's config as JSON, then the samples. A sample is a u32 size per variable-size column, then the
  columns' bytes in column order. A compressed shard is the raw shard compressed as one piece.
- `ndarray[:dtype[:shape]]`: without a dtype, one dtype-code byte first; without a shape, a byte
  (ndim << 2 | code of the shape's uint width) and the shape; then the values (little-endian). So
  `ndarray:uint32` still carries a shape prefix; only a static shape leaves the bare values.
- `str`: UTF-8 bytes.

Decoding is vectorized over a shard's samples (numpy gathers over the offsets and column headers),
and the ids are pulled out with one slice per sample: no Python work per token.
"""

import bz2
import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ettin_megatron.errors import InputError

INDEX = "index.json"

#: ndarray dtype codes (the reference's NDArray encoding).
_VALUE_DTYPES = {8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32",
                 33: "int32", 34: "float32", 64: "uint64", 65: "int64", 66: "float64"}


@dataclass(frozen=True)
class Shard:
    """One shard as its index.json describes it; `path` is the file to read (the raw file when it is
    present, else the compressed one, as StreamingDataset does), `hashes` that file's digests."""

    path: str
    index: str
    compression: Optional[str]
    raw_bytes: int
    file_bytes: int
    hashes: Tuple[Tuple[str, str], ...]
    samples: int
    column_names: Tuple[str, ...]
    column_encodings: Tuple[str, ...]
    column_sizes: Tuple[Optional[int], ...]

    def encoding(self, column: str) -> str:
        if column not in self.column_names:
            raise InputError(f"{self.path}: no column {column!r} (columns: {', '.join(self.column_names)})")
        return self.column_encodings[self.column_names.index(column)]


def is_mds(spec: str) -> bool:
    """True when --input is a directory holding an index.json somewhere in its tree."""
    return os.path.isdir(spec) and any(INDEX in files for _, _, files in os.walk(spec))


def find_shards(root: str) -> List[Shard]:
    """Every shard under `root`, each once, in a fixed order.

    A folder's index.json stands for its whole tree (StreamingDataset reads only the top one), so the
    index.json files below it are not read again: Ettin's release has a root index naming
    part_*/shard.* beside each part's own index, and counting both would double the data. Those lower
    indexes must only list shards the upper one lists (else the upper index is stale: an error). Folders
    without a covering index are taken in sorted path order, shards in index order.
    """
    rels = (os.path.relpath(d, root) for d, _, files in os.walk(root) if INDEX in files)
    dirs = sorted([] if rel == os.curdir else rel.split(os.sep) for rel in rels)  # parents first
    tops, shards = [], []
    for parts in dirs:
        top = next((t for t in tops if parts[: len(t)] == t), None)
        folder = os.path.join(root, *parts)
        listed = _read_index(folder)
        if top is None:
            tops.append(parts)
            shards.extend(listed)
            continue
        covering = {s.path for s in shards}
        for shard in listed:
            if shard.path not in covering:
                raise InputError(
                    f"{shard.index}: lists {shard.path}, which {os.path.join(root, *top, INDEX)} does not; "
                    "that index is stale (rebuild it, or point --input at the folders below it)"
                )
    return shards


def _read_index(folder: str) -> List[Shard]:
    path = os.path.join(folder, INDEX)
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)["shards"]
        return [_shard(folder, path, entry) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: not an MDS index ({type(exc).__name__}: {exc})") from exc


def _shard(folder: str, index: str, entry: dict) -> Shard:
    if entry.get("format") != "mds" or entry.get("version") != 2:
        raise InputError(f"{index}: a shard of format {entry.get('format')!r} version "
                         f"{entry.get('version')!r}; only MDS version 2 is supported")
    raw, zipped = entry["raw_data"], entry.get("zip_data")
    raw_path = os.path.join(folder, raw["basename"])
    use_raw = zipped is None or os.path.isfile(raw_path)
    info = raw if use_raw else zipped
    return Shard(
        path=os.path.join(folder, info["basename"]), index=index,
        compression=None if use_raw else entry["compression"],
        raw_bytes=int(raw["bytes"]), file_bytes=int(info["bytes"]),
        hashes=tuple(sorted((info.get("hashes") or {}).items())), samples=int(entry["samples"]),
        column_names=tuple(entry["column_names"]), column_encodings=tuple(entry["column_encodings"]),
        column_sizes=tuple(entry["column_sizes"]),
    )


def check_shard(shard: Shard) -> None:
    """The checks that need no reading, run on every shard before any work: the file is there, has
    the size its index says (a truncated download fails here), and its compression and hashes are
    ones we can undo and verify."""
    try:
        size = os.path.getsize(shard.path)
    except OSError:
        raise InputError(f"{shard.path}: listed in {shard.index} but missing") from None
    if size != shard.file_bytes:
        raise InputError(f"{shard.path}: {size} bytes, but {shard.index} says {shard.file_bytes} (truncated "
                         "or partial download?)")
    _decompressor(shard)
    for algo, _ in shard.hashes:
        _hasher(shard, algo)


def _decompressor(shard: Shard):
    family = (shard.compression or "").split(":")[0]
    if not family:
        return None
    if family == "zstd":
        try:
            import zstandard
        except ImportError:
            raise InputError(f"{shard.path}: reading zstd shards needs the zstandard package "
                             "(pip install zstandard)") from None
        return lambda data: zstandard.ZstdDecompressor().decompress(data, max_output_size=shard.raw_bytes)
    if family in ("gz", "bz2"):
        return gzip.decompress if family == "gz" else bz2.decompress
    raise InputError(f"{shard.path}: compression {shard.compression!r} is not supported (zstd, gz, bz2)")


def _hasher(shard: Shard, algo: str):
    if algo.startswith("xxh"):
        try:
            import xxhash
        except ImportError:
            raise InputError(f"{shard.path}: verifying its {algo} hash needs the xxhash package "
                             "(pip install xxhash)") from None
        if hasattr(xxhash, algo):
            return getattr(xxhash, algo)
    elif algo in hashlib.algorithms_available:
        return lambda data: hashlib.new(algo, data)
    raise InputError(f"{shard.path}: unknown hash algorithm {algo!r} in {shard.index}")


def read_shard(shard: Shard) -> bytes:
    """The shard's raw bytes, after checking its hashes and decompressing it."""
    with open(shard.path, "rb") as f:
        data = f.read()
    for algo, expected in shard.hashes:
        if _hasher(shard, algo)(data).hexdigest() != expected:
            raise InputError(f"{shard.path}: {algo} hash differs from {shard.index} (corrupt file)")
    decompress = _decompressor(shard)
    if decompress is not None:
        try:
            data = decompress(data)
        except Exception as exc:  # zstandard, gzip and bz2 each raise their own error types
            raise InputError(f"{shard.path}: cannot decompress ({shard.compression}: {exc})") from exc
    if len(data) != shard.raw_bytes:
        raise InputError(f"{shard.path}: {len(data)} bytes decompressed, {shard.index} says {shard.raw_bytes}")
    return data


def column_spans(shard: Shard, raw: bytes, column: str) -> Tuple[np.ndarray, np.ndarray]:
    """Byte ranges [begin, end) of `column` in every sample of the raw shard, in sample order."""
    column_index = shard.column_names.index(column)
    u8 = np.frombuffer(raw, np.uint8)
    n = shard.samples
    if len(raw) < 4 * (n + 2) or int(_u32(u8, np.zeros(1, np.int64))[0]) != n:
        raise InputError(f"{shard.path}: header does not hold {n} samples (corrupt shard)")
    offsets = _u32(u8, 4 + 4 * np.arange(n + 1, dtype=np.int64))
    starts, ends = offsets[:-1], offsets[1:]
    if offsets[0] < 4 * (n + 2) or offsets[-1] != len(raw) or np.any(ends < starts):
        raise InputError(f"{shard.path}: sample offsets out of order or beyond the file (corrupt shard)")
    sizes, variable = [], 0
    for size in shard.column_sizes:
        if size is None:
            if np.any(ends - starts < 4 * (variable + 1)):
                raise InputError(f"{shard.path}: a sample is shorter than its size header (corrupt shard)")
            sizes.append(_u32(u8, starts + 4 * variable))
            variable += 1
        else:
            sizes.append(np.full(n, size, np.int64))
    begin = starts + 4 * variable + sum(sizes[:column_index], np.zeros(n, np.int64))
    if np.any(begin + sum(sizes[column_index:], np.zeros(n, np.int64)) != ends):
        raise InputError(f"{shard.path}: column sizes do not add up to the sample sizes (corrupt shard)")
    return begin, begin + sizes[column_index]


def token_ids(shard: Shard, raw: bytes, column: str) -> Tuple[np.ndarray, np.ndarray]:
    """An integer `ndarray` column of every sample: (all values concatenated in sample order, their
    count per sample). Values keep the stored dtype."""
    encoding = shard.encoding(column)
    name, _, spec = encoding.partition(":")
    if name != "ndarray":
        raise InputError(f"{shard.path}: column {column!r} is {encoding!r}, not an ndarray of token ids")
    dtype_name, _, shape = spec.partition(":")
    u8 = np.frombuffer(raw, np.uint8)
    begin, end = column_spans(shard, raw, column)
    if not dtype_name:
        codes = u8[begin]
        if np.any(codes != codes[:1]):
            raise InputError(f"{shard.path}: column {column!r} mixes dtypes across samples")
        dtype_name = _VALUE_DTYPES.get(int(codes[0]), "") if len(codes) else "int64"
        begin = begin + 1
    dtype = np.dtype(dtype_name).newbyteorder("<") if dtype_name else None
    if dtype is None or dtype.kind not in "iu":
        raise InputError(f"{shard.path}: column {column!r} holds {dtype_name or 'unknown'} values, not integer ids")
    if shape:
        counts = np.full(len(begin), int(np.prod([int(d) for d in shape.split(",")])), np.int64)
    else:
        counts, begin = _dynamic_shape(shard, u8, begin, column)
    if np.any(begin + counts * dtype.itemsize != end):
        raise InputError(f"{shard.path}: column {column!r}: array sizes do not match their shapes (corrupt shard)")
    return gather(u8, begin, end).view(dtype), counts


def _dynamic_shape(shard: Shard, u8: np.ndarray, begin: np.ndarray, column: str):
    """Read the (ndim, shape) prefix of every sample; ids must be 1-D. Returns (lengths, value starts)."""
    head = u8[begin].astype(np.int64)
    if np.any(head >> 2 != 1):
        raise InputError(f"{shard.path}: column {column!r} holds arrays that are not 1-D")
    width = 1 << (head & 3)
    lengths = np.zeros(len(begin), np.int64)
    for w in np.unique(width).tolist():
        rows = np.flatnonzero(width == w)
        data = u8[begin[rows, None] + 1 + np.arange(w)]
        lengths[rows] = data.view(f"<u{w}")[:, 0].astype(np.int64)
    return lengths, begin + 1 + width


def texts(shard: Shard, raw: bytes, column: str) -> List[str]:
    """A `str` column of every sample."""
    encoding = shard.encoding(column)
    if encoding != "str":
        raise InputError(f"{shard.path}: column {column!r} is {encoding!r}, not str text")
    out = []
    for number, (a, b) in enumerate(zip(*(x.tolist() for x in column_spans(shard, raw, column)))):
        try:
            out.append(raw[a:b].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InputError(f"{shard.path}: sample {number}: invalid UTF-8 at byte {exc.start}") from None
    return out


def gather(u8: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Concatenate the byte ranges [begin_i, end_i): one memcpy per sample. A per-sample slice costs
    ~0.5 us of Python, far below the copy of a sample's ids (a byte mask over the whole shard, tried
    first, was ~30x slower: it passes over every byte three times)."""
    return np.concatenate([u8[a:b] for a, b in zip(begin.tolist(), end.tolist())] or [u8[:0]])


def _u32(u8: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Little-endian u32 values at byte positions `at` (which need not be aligned), as int64."""
    return u8[at[:, None] + np.arange(4)].view("<u4")[:, 0].astype(np.int64)


def column_kinds(shards: Sequence[Shard], keys: Sequence[str], missing_ok: bool = False) -> Dict[str, str]:
    """{key: "text" or "ids"} from the column encodings; every shard must hold every key (unless
    `missing_ok`: --skip-invalid skips such shards later), all with the same kind."""
    kinds: Dict[str, str] = {}
    for shard in shards:
        for key in keys:
            if missing_ok and key not in shard.column_names:
                continue
            encoding = shard.encoding(key)
            kind = "text" if encoding == "str" else "ids" if encoding.split(":")[0] == "ndarray" else None
            if kind is None:
                raise InputError(f"{shard.path}: column {key!r} is {encoding!r}; expected str (text) or "
                                 "ndarray (token ids)")
            if kinds.setdefault(key, kind) != kind:
                raise InputError(f"{shard.path}: column {key!r} is {encoding!r}, but earlier shards hold {kinds[key]}")
    return kinds
