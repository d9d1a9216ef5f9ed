"""Reading and writing weights as safetensors, never through pickle.

* ``write_safetensors`` streams tensors to a ``.safetensors`` file one at a time (the format is a
  little-endian u64 header length, a JSON header of dtype / shape / byte offsets, then the raw bytes):
  unlike ``safetensors.torch.save_file`` it holds no second copy of the weights in memory, and it
  casts each tensor to the requested dtype as it writes it.
* ``HFWeights`` is a read-only, lazy mapping over a Hugging Face directory's ``model.safetensors``
  (or its ``model.safetensors.index.json`` shards): shapes are read from the headers (checked against
  the file size), a tensor is read only when it is asked for, or straight into a destination tensor.
  Pickle-based files (``pytorch_model.bin``) are refused.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import ConfigError

DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32"}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                      metadata: dict | None = None) -> None:
    """Write ``tensors`` to ``path``; floating tensors are cast to ``dtype`` (if given) one at a time."""

    def out_dtype(t: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    header, offset = {"__metadata__": {"format": "pt", **(metadata or {})}}, 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        if out_dtype(t) not in DTYPES:
            raise ConfigError(f"cannot write tensor {name!r} of dtype {out_dtype(t)} to safetensors.")
        size = t.numel() * torch.empty((), dtype=out_dtype(t)).element_size()
        header[name] = {"dtype": DTYPES[out_dtype(t)], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name in names:
            t = tensors[name].detach().to(device="cpu", dtype=out_dtype(tensors[name])).contiguous()
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            del t


_FROM_NAME = {name: dtype for dtype, name in DTYPES.items()}


class _Entry:
    """Where one tensor lies in a safetensors file."""

    def __init__(self, path: Path, name: str, info, data_start: int, file_size: int):
        try:
            self.dtype, self.shape = _FROM_NAME[info["dtype"]], tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: tensor {name!r} has an unsupported or malformed header entry.") from None
        size = math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()
        if end - begin != size or begin < 0 or data_start + end > file_size:
            raise ConfigError(f"{path}: tensor {name!r} has byte offsets that do not match its shape; the file is corrupt.")
        self.path, self.offset, self.size = path, data_start + begin, size

    def read_into(self, out: torch.Tensor) -> torch.Tensor:
        """Read the bytes straight into ``out`` (same shape and dtype, contiguous): no extra copy."""
        if out.numel():
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                if f.readinto(out.reshape(-1).view(torch.uint8).numpy()) != self.size:
                    raise ConfigError(f"{self.path} is truncated.")
        return out

    def load(self) -> torch.Tensor:
        return self.read_into(torch.empty(self.shape, dtype=self.dtype))


def _read_header(path: Path) -> dict[str, _Entry]:
    file_size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(file_size - 8, 100_000_000):
                raise ValueError("header length beyond the file")
            header = json.loads(f.read(length))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable safetensors file ({exc}).") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{path} is not a readable safetensors file (header is not an object).")
    header.pop("__metadata__", None)
    return {name: _Entry(path, name, info, 8 + length, file_size) for name, info in header.items()}


class HFWeights(Mapping):
    """Name -> tensor of a Hugging Face directory's safetensors weights, read lazily with plain file
    reads (no memory map, so that reading the weights does not also keep the file's pages mapped)."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        if (directory / INDEX_FILE).is_file():
            try:
                weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise ConfigError(f"{directory / INDEX_FILE} is not a safetensors index ({exc}).") from None
            paths = sorted({directory / file for file in weight_map.values()})
        elif (directory / SINGLE_FILE).is_file():
            paths = [directory / SINGLE_FILE]
        else:
            pickled = [name for name in PICKLE_FILES if (directory / name).is_file()]
            if pickled:
                raise ConfigError(
                    f"{directory} holds weights only as {pickled[0]} (pickle), which is never loaded here; "
                    "convert it to model.safetensors first (transformers: save_pretrained(dir, "
                    "safe_serialization=True))."
                )
            raise ConfigError(f"{directory} has no {SINGLE_FILE} (nor {INDEX_FILE}); not a Hugging Face model directory.")
        self._entries: dict[str, _Entry] = {}
        for path in paths:
            if not path.is_file():
                raise ConfigError(f"{path}, named by {INDEX_FILE}, is missing.")
            self._entries.update(_read_header(path))

    def entry(self, name: str) -> _Entry:
        return self._entries[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def dtype(self, name: str) -> torch.dtype:
        return self._entries[name].dtype

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._entries:
            raise KeyError(name)
        return self._entries[name].load()

    def __contains__(self, name) -> bool:  # Mapping's default would read the tensor
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
