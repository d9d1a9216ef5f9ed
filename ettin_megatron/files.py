"""Writing files so that a reader never sees a half-written one: every file is written under a
temporary name and renamed into place once complete (``atomic_write``), dataset pairs in an order no
reader mistakes for a dataset (``publish``).

Preprocessing, merging, tokenizer training, the sample-index cache, checkpoints and the Hugging Face
export all write through these helpers, so one place decides the temporary names and the renames.
"""

import contextlib
import json
import os
from typing import Union

PathLike = Union[str, os.PathLike]


def temporary_name(path: PathLike) -> str:
    """The name a file is written under before it is renamed to ``path``; the pid keeps concurrent
    writers apart."""
    return f"{os.fspath(path)}.{os.getpid()}.tmp"


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w"):
    """``open(path, mode)`` as a reader sees it: the file is written under ``temporary_name(path)`` and
    renamed to ``path`` once closed without error, or removed after an error."""
    temporary = temporary_name(path)
    try:
        with open(temporary, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
            yield file
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json(path: PathLike, obj) -> None:
    """Indented JSON with sorted keys and a final newline (stable bytes for the same content), in a
    directory created if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


RECORD_SUFFIX = ".meta.json"
"""The record beside a dataset's .bin/.idx (data/dataset_info.py), published with them."""


def temp_paths(prefix: str) -> tuple:
    """(bin, idx, record) names to write before `publish`."""
    return tuple(temporary_name(prefix + suffix) for suffix in (".bin", ".idx", RECORD_SUFFIX))


def publish(temp: tuple, prefix: str) -> None:
    """Rename finished files into place: the old .idx and record go first and the new .idx last, so
    a crash in between leaves a .bin without .idx, which no reader mistakes for a dataset. Without a
    record to publish (a merge of Megatron-LM datasets), none is left beside the new pair."""
    for old in (prefix + ".idx", prefix + RECORD_SUFFIX):
        if os.path.exists(old):
            os.remove(old)
    os.replace(temp[0], prefix + ".bin")
    if os.path.exists(temp[2]):
        os.replace(temp[2], prefix + RECORD_SUFFIX)
    os.replace(temp[1], prefix + ".idx")


def remove_temps(*temps: tuple) -> None:
    """Delete whatever temporary files exist (after an error)."""
    for pair in temps:
        for path in pair:
            if os.path.exists(path):
                os.remove(path)
