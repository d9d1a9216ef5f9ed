"""Refuse a dist checkpoint whose pickled index could run code, before torch unpickles it.

Of a dist checkpoint's files, torch.distributed.checkpoint reads ``.metadata`` with a plain
``pickle.load`` (any class, any callable). Tensor data (``*.distcp``) and ``common.pt`` go through
``torch.load(weights_only=True)`` (torch >= 2.6), which is already restricted. We first parse
``.metadata`` with an unpickler that only knows torch DCP's metadata classes, ``torch.Size``, torch
dtypes and the layout helper; anything else (a reference to ``os.system``, say) fails the check
with one line and the real loader never sees the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..config import ConfigError

_DCP_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.planner",
    "torch.distributed.checkpoint.filesystem",
)
_ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or module in _DCP_MODULES:
            found = super().find_class(module, name)
            if module in _DCP_MODULES and not isinstance(found, type):
                raise pickle.UnpicklingError(f"{module}.{name} is not a metadata class")
            return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def check_checkpoint_pickles(directory: str | Path) -> None:
    """Raise ConfigError unless every ``*.metadata`` file of ``directory`` holds only metadata."""
    for path in sorted(Path(directory).glob("*.metadata")):
        try:
            with open(path, "rb") as f:
                _MetadataUnpickler(f).load()
        except Exception as exc:  # any failure to parse safely is a refusal
            raise ConfigError(
                f"{path} is not a plain torch.distributed.checkpoint index ({exc}); refusing to load it."
            ) from None
