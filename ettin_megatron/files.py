"""Writing files so that a reader never sees a half-written one: stable JSON, and dataset pairs
written under temporary names and renamed into place once complete.

Preprocessing, merging, tokenizer training and the Hugging Face export all write through these
helpers, so one place decides the temporary names and the order of the renames.
"""

import json
import os
from typing import Union


def write_json(path: Union[str, os.PathLike], obj) -> None:
    """Indented JSON with sorted keys and a final newline (stable bytes for the same content), in a
    directory created if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def temp_paths(prefix: str) -> tuple:
    """(bin, idx) names to write before `publish`; the pid keeps concurrent runs apart."""
    tag = f".{os.getpid()}.tmp"
    return prefix + ".bin" + tag, prefix + ".idx" + tag


def publish(temp: tuple, prefix: str) -> None:
    """Rename finished files into place: the old .idx goes first and the new .idx last, so a crash
    in between leaves a .bin without .idx, which no reader mistakes for a dataset."""
    if os.path.exists(prefix + ".idx"):
        os.remove(prefix + ".idx")
    os.replace(temp[0], prefix + ".bin")
    os.replace(temp[1], prefix + ".idx")


def remove_temps(*temps: tuple) -> None:
    """Delete whatever temporary files exist (after an error)."""
    for pair in temps:
        for path in pair:
            if os.path.exists(path):
                os.remove(path)
