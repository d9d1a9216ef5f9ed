"""Refuse a dist checkpoint whose pickled index could run code, before torch unpickles it.

Of a dist checkpoint's files, torch.distributed.checkpoint reads ``.metadata`` with a plain
``pickle.load`` (any class, any callable). Tensor data (``*.distcp``) and ``common.pt`` go through
``torch.load(weights_only=True)`` (torch >= 2.6), which is already restricted. We first parse
``.metadata`` with an unpickler that only knows torch DCP's metadata classes, ``torch.Size``, torch
dtypes and the layout helper; anything else (a reference to ``os.system``, say) fails the check
with one line and the real loader never sees the file. The check builds stand-ins, never the real
classes, and refuses state set on anything but a metadata object (a class attribute or an enum value
changed by the file would outlive it).

Enum members (DCP's ``_MEM_FORMAT_ENCODING``) are pickled as ``builtins.getattr(EnumClass, name)`` by
some Python versions (3.11.2 does, 3.11.7 does not), so ``getattr`` resolves, but only to a member of
an enum the unpickler already allowed: a general ``getattr`` would reach ``__globals__`` and ``os``.
"""

from __future__ import annotations

import enum
import pickle
from pathlib import Path

import torch

from ..errors import ConfigError

_DCP_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.planner",
    "torch.distributed.checkpoint.filesystem",
)
_ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")}


class _StandIn:
    """Built, called and filled by the check in place of an allowed class, function, dtype or enum
    member, so that checking a file changes nothing real. ``takes_state`` marks the DCP metadata
    classes, the only objects a plain index gives state to (pickle's BUILD)."""

    real = None
    takes_state = False

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


def _stand_in(real, takes_state: bool = False) -> type:
    return type("StandIn", (_StandIn,), {"real": real, "takes_state": takes_state})


def _enum_member(cls, name):
    """What ``getattr`` may do in metadata: name a member of an allowed enum class."""
    real = cls.real if isinstance(cls, type) and issubclass(cls, _StandIn) else None
    if not (isinstance(real, type) and issubclass(real, enum.Enum) and name in real.__members__):
        raise pickle.UnpicklingError(f"getattr({real or cls!r}, {name!r}) is not allowed in checkpoint metadata")
    return _stand_in(real[name])()


class _MetadataUnpickler(pickle._Unpickler):
    """The Python implementation of the unpickler (the C one cannot intercept BUILD), resolving
    names to stand-ins after checking them against the allow-list."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        if (module, name) == ("builtins", "getattr"):
            return _enum_member
        if (module, name) in _ALLOWED or module in _DCP_MODULES:
            found = super().find_class(module, name)
            if module in _DCP_MODULES and not isinstance(found, type):
                raise pickle.UnpicklingError(f"{module}.{name} is not a metadata class")
            return _stand_in(found, takes_state=module in _DCP_MODULES and not issubclass(found, enum.Enum))
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return _stand_in(getattr(torch, name))
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")

    def _load_build(self):
        """State may only go to metadata objects: setting it on a class or an enum member would
        change them for the whole process when torch loads the file for real."""
        target = self.stack[-2]
        if not (isinstance(target, _StandIn) and target.takes_state):
            raise pickle.UnpicklingError(f"setting state on {getattr(target, 'real', target)!r} is not allowed "
                                         "in checkpoint metadata")
        super().load_build()

    dispatch[pickle.BUILD[0]] = _load_build


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
