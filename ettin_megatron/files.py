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


RECORD_SUFFIX = ".meta.json"
"""The record beside a dataset's .bin/.idx (data/dataset_info.py), published with them."""


def temp_paths(prefix: str) -> tuple:
    """(bin, idx, record) names to write before `publish`; the pid keeps concurrent runs apart."""
    tag = f".{os.getpid()}.tmp"
    return prefix + ".bin" + tag, prefix + ".idx" + tag, prefix + RECORD_SUFFIX + tag


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
