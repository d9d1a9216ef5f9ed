"""Refuse a dist checkpoint whose pickled index could run code, before torch unpickles it.

Of a dist checkpoint's files, torch.distributed.checkpoint reads ``.metadata`` with a plain
``pickle.load`` (any class, any callable). Tensor data (``*.distcp``) and ``common.pt`` go through
``torch.load(weights_only=True)`` (torch >= 2.6), which is already restricted. We first parse
``.metadata`` with an unpickler that only knows torch DCP's metadata classes, ``torch.Size``, torch
dtypes and the layout helper; anything else (a reference to ``os.system``, say) fails the check
with one line and the real loader never sees the file.

Enum members (DCP's ``_MEM_FORMAT_ENCODING``) are pickled as ``builtins.getattr(EnumClass, name)`` by
some Python versions (3.11.2 does, 3.11.7 does not), so ``getattr`` resolves, but only to a member of
an enum the unpickler already allowed: a general ``getattr`` would reach ``__globals__`` and ``os``.
"""

from __future__ import annotations

import enum
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


def _enum_member(cls, name: str):
    """What ``getattr`` may do in metadata: look up a member of an (allowed) enum class."""
    if not (isinstance(cls, type) and issubclass(cls, enum.Enum) and name in cls.__members__):
        raise pickle.UnpicklingError(f"getattr({cls!r}, {name!r}) is not allowed in checkpoint metadata")
    return cls[name]


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("builtins", "getattr"):
            return _enum_member
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
