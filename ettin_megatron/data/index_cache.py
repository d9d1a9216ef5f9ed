"""Dataset indices cached as .npy files that every rank memory-maps, written so that a killed write
is never taken for a complete cache.

Files carry megatron's names, ``<description hash>-<class>-<split>-<name>`` with a
``description.txt`` beside the arrays, and a cache is complete when all of them exist. Each file is
written under a temporary name and renamed into place (files.atomic_write); the description is renamed
last, so a build killed at any point leaves no description, and the next build starts over.
"""

import os
from typing import Optional, Sequence, Tuple

import numpy

from ettin_megatron.errors import ConfigError
from ettin_megatron.files import atomic_write


def default_cache_dir(prefix: str) -> str:
    """Where indices go without --data-cache-path: ``cache/`` beside the data files, shared by every
    rank that reads them (megatron's GPTDataset likewise defaults to ``<prefix>/cache/``)."""
    return os.path.join(os.path.dirname(os.path.abspath(prefix)), "cache")


def writable(directory: str) -> Optional[str]:
    """None if indices can be written to `directory` (created if needed), else why not."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        return f"{type(error).__name__}: {error.strerror or error}"
    return None if os.access(directory, os.W_OK | os.X_OK) else "not writable"


def require_writable(directory: str) -> None:
    """Refuse an explicit --data-cache-path the indices cannot be written to, before building them."""
    reason = writable(directory)
    if reason:
        raise ConfigError(f"--data-cache-path {directory} cannot hold the sample indices ({reason}); "
                          "pass a writable directory.")


def paths(directory: str, base: str, names: Sequence[str]) -> Tuple[list, str]:
    """(the array files, the description file) of one cache entry."""
    return [os.path.join(directory, f"{base}-{name}") for name in names], os.path.join(directory, f"{base}-description.txt")


def load(directory: str, base: str, names: Sequence[str]) -> Optional[tuple]:
    """The cached arrays as read-only memory maps, or None when the entry is incomplete."""
    arrays, description = paths(directory, base, names)
    if not all(os.path.isfile(path) for path in arrays + [description]):
        return None
    return tuple(numpy.load(path, mmap_mode="r", allow_pickle=False) for path in arrays)


def save(directory: str, base: str, names: Sequence[str], arrays: Sequence[numpy.ndarray], description: str) -> None:
    """Write one cache entry: every array under a temporary name then renamed, the description last."""
    array_paths, description_path = paths(directory, base, names)
    os.makedirs(directory, exist_ok=True)
    for path, array in zip(array_paths, arrays):
        with atomic_write(path, "wb") as writer:
            numpy.save(writer, array, allow_pickle=False)
    with atomic_write(description_path) as writer:
        writer.write(description)
