"""Test and benchmark helpers: an MDS writer (the reference `mosaicml-streaming` cannot be installed
here) and a word-level tokenizer whose vocabulary and special ids match given token ids.

The writer follows the reference MDSWriter's layout and shard-splitting rule; test_mds.py checks that
it rewrites the reference writer's uncompressed fixture byte for byte, so shards it builds (corrupted
copies, benchmark corpora, the training test's corpus) are what the reference would write.
"""

import hashlib
import json
import os
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, processors

_DTYPE_CODES = {"uint8": 8, "int8": 9, "uint16": 16, "int16": 17, "uint32": 32, "int32": 33,
                "uint64": 64, "int64": 65}
_SHAPE_WIDTHS = ((1 << 8, 0, "<u1"), (1 << 16, 1, "<u2"), (1 << 32, 2, "<u4"), (1 << 64, 3, "<u8"))


def encode(encoding: str, value) -> bytes:
    """One column value as the reference encodes it (str, int and 1-D integer ndarray columns)."""
    if encoding == "str":
        return value.encode("utf-8")
    if encoding == "int":
        return np.int64(value).tobytes()
    name, _, dtype = encoding.partition(":")
    assert name == "ndarray" and ":" not in dtype, encoding
    value = np.asarray(value)
    head = b"" if dtype else bytes([_DTYPE_CODES[value.dtype.name]])
    limit, code, width = next(w for w in _SHAPE_WIDTHS if len(value) < w[0])
    head += bytes([1 << 2 | code]) + np.array([len(value)], width).tobytes()
    return head + value.astype(value.dtype.newbyteorder("<")).tobytes()


def write_mds(out: str, columns: Dict[str, str], rows: Iterable[dict], compression: Optional[str] = None,
              size_limit: Optional[int] = 1 << 26, hashes: Sequence[str] = ()) -> None:
    """Write `rows` as an MDS dataset in `out` (index.json + shard.NNNNN.mds[.zstd])."""
    names = sorted(columns)
    config = dict(version=2, format="mds", compression=compression, hashes=list(hashes), size_limit=size_limit,
                  column_names=names, column_encodings=[columns[n] for n in names],
                  column_sizes=[8 if columns[n] == "int" else None for n in names])
    config_bytes = json.dumps(config, sort_keys=True).encode()
    os.makedirs(out, exist_ok=True)
    shards, samples, size = [], [], 8 + len(config_bytes)
    for row in rows:
        parts = [encode(columns[n], row[n]) for n in names]
        head = np.array([len(p) for n, p in zip(names, parts) if columns[n] != "int"], np.uint32).tobytes()
        sample = head + b"".join(parts)
        if size_limit and size_limit < size + len(sample) + 4:
            shards.append(_flush(out, len(shards), samples, config, config_bytes))
            samples, size = [], 8 + len(config_bytes)
        samples.append(sample)
        size += len(sample) + 4
    if samples:
        shards.append(_flush(out, len(shards), samples, config, config_bytes))
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"shards": shards, "version": 2}, f, sort_keys=True)


def _flush(out, number, samples, config, config_bytes) -> dict:
    header = 4 * (len(samples) + 2) + len(config_bytes)
    offsets = header + np.concatenate([[0], np.cumsum([len(s) for s in samples])])
    raw = np.uint32(len(samples)).tobytes() + offsets.astype(np.uint32).tobytes() + config_bytes + b"".join(samples)
    raw_name = f"shard.{number:05}.mds"
    entry = dict(config, samples=len(samples), raw_data=_file_info(raw, raw_name, config), zip_data=None)
    data, name = raw, raw_name
    if config["compression"]:
        import zstandard

        assert config["compression"].split(":")[0] == "zstd"
        data, name = zstandard.ZstdCompressor(level=3).compress(raw), raw_name + ".zstd"
        entry["zip_data"] = _file_info(data, name, config)
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    return entry


def _file_info(data: bytes, basename: str, config: dict) -> dict:
    hashes = {algo: _digest(algo, data) for algo in config["hashes"]}
    return {"basename": basename, "bytes": len(data), "hashes": hashes}


def _digest(algo: str, data: bytes) -> str:
    if algo.startswith("xxh"):
        import xxhash

        return getattr(xxhash, algo)(data).hexdigest()
    return hashlib.new(algo, data).hexdigest()


def id_tokenizer(directory: str, vocab_size: int, cls_id: int, sep_id: int) -> str:
    """A word-level tokenizer with `vocab_size` ids ("w<i>"), [CLS]/[SEP] at the given ids and the
    `[CLS] $A [SEP]` template: the vocabulary check and framing of token-id input need no real
    ModernBERT tokenizer. Returns its directory."""
    words = {i: f"w{i}" for i in range(vocab_size)}
    words.update({0: "a", cls_id: "[CLS]", sep_id: "[SEP]"})  # "a": the probe wrap_ids encodes
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in words.items()}, unk_token="a"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    return directory
