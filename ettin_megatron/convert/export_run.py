"""Export a whole run: every complete checkpoint of a run's --save directory as a Hugging Face folder.

Ettin published its whole trajectory, each checkpoint a revision named for its phase and step:
``step{N}`` in pre-training, ``ext{N}`` in context extension, ``decay{N}`` in the decay phase. A phase
started with --finetune counts its steps from 0 again, so the phase tag is what tells ``ext500`` from
``step500``; each phase trains into its own --save, exported with its own tag into one shared output.

Each folder is the export of ``convert_checkpoint.py megatron-to-hf`` (export_hf.megatron_to_hf, the same
function) plus CHECKPOINT_RECORD: the step, samples and tokens the run had consumed at that checkpoint
and the iteration directory it came from, what a loss-against-tokens plot needs. megatron_to_hf stages
the folder as ``<name>.tmp`` and renames it into place; the record is written after that rename. So a
folder is complete exactly when its record is there: an export killed at any moment leaves a ``.tmp``
or a folder without record, and the next run redoes it (the stale ``.tmp`` is replaced) rather than
skipping it.

The exporter only reads the run: ``checkpoint.saved_iterations`` lists an ``iter_N`` once its save is
renamed into place, never the ``iter_N.tmp`` being written, so watching a run that is training is safe.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..checkpoint import iteration_of, saved_iterations, training_position
from ..errors import ConfigError
from ..files import write_json
from .export_hf import megatron_to_hf

CHECKPOINT_RECORD = "ettin_checkpoint.json"
"""The file beside the weights of an exported folder: {"name", "phase_tag", "iteration",
"consumed_samples", "consumed_tokens", "source"} (the consumed counts are null for a checkpoint without
training state, such as an import). Written last: a folder without it is not a complete export."""

PHASE_TAGS = ("step", "ext", "decay")
"""Ettin's revision prefixes: pre-training, context extension, decay."""


def folder_name(phase_tag: str, iteration: int) -> str:
    if phase_tag not in PHASE_TAGS:
        raise ConfigError(f"unknown phase tag {phase_tag!r}; use one of {', '.join(PHASE_TAGS)}.")
    return f"{phase_tag}{iteration}"


def read_record(folder: str | os.PathLike) -> dict | None:
    """The CHECKPOINT_RECORD of an exported folder, or None when the folder is not a complete export."""
    try:
        return json.loads((Path(folder) / CHECKPOINT_RECORD).read_text())
    except (OSError, ValueError):
        return None


def is_exported(directory: Path, folder: Path) -> bool:
    """Whether ``folder`` is already the complete export of checkpoint ``directory``. A complete folder
    exported from another checkpoint is refused: it is how a phase that restarted its step count, exported
    under the previous phase's tag, would otherwise be mistaken for done."""
    record = read_record(folder)
    if record is None:
        return False
    source = str(directory.resolve())
    if record.get("source") != source:
        raise ConfigError(f"{folder} is the export of {record.get('source')}, not of {source}: a phase that starts "
                          "its steps again (--finetune) needs its own --phase-tag (ext, decay), or choose another "
                          "--output.")
    return True


def export_checkpoint(directory: Path, folder: Path, phase_tag: str, tokenizer: str | None = None,
                      dtype: str | None = None) -> dict:
    """megatron_to_hf of ``directory`` into ``folder``, then its record (last); returns the record."""
    position = training_position(directory) or {
        "iteration": iteration_of(directory), "consumed_samples": None, "consumed_tokens": None}
    megatron_to_hf(directory, folder, tokenizer=tokenizer, dtype=dtype)
    record = {"name": folder.name, "phase_tag": phase_tag, **position, "source": str(directory.resolve())}
    write_json(folder / CHECKPOINT_RECORD, record)
    return record


@dataclass(frozen=True)
class Watch:
    """How long ``--watch`` keeps looking for new checkpoints (None: no such limit)."""

    poll_seconds: float = 30.0
    until_iteration: int | None = None  # stop once a checkpoint at or past it has been handed out
    idle_timeout: float | None = None  # stop after this many seconds without a new checkpoint


class RunCheckpoints:
    """Each complete iteration directory of ``run``, once, oldest first; with a Watch, also each one saved
    later, found by polling, until ``stop`` is set (between two checkpoints: the caller's work on one is
    never cut short), the Watch's iteration is reached or its idle time passes. ``ended_by`` then says why."""

    def __init__(self, run: str | os.PathLike, watch: Watch | None = None, stop: threading.Event | None = None):
        self.run, self.watch, self.stop = Path(run), watch, stop or threading.Event()
        self.ended_by = None

    def __iter__(self) -> Iterator[Path]:
        seen, last_new = set(), time.monotonic()
        while True:
            for directory in saved_iterations(self.run):
                if directory.name in seen:
                    continue
                seen.add(directory.name)
                last_new = time.monotonic()
                yield directory
                if self.stop.is_set():
                    self.ended_by = "stop requested"
                    return
                until = self.watch.until_iteration if self.watch else None
                if until is not None and iteration_of(directory) >= until:
                    self.ended_by = f"iteration {until} reached"
                    return
            if self.watch is None:
                self.ended_by = "every checkpoint handled"
                return
            idle = time.monotonic() - last_new
            if self.watch.idle_timeout is not None and idle >= self.watch.idle_timeout:
                self.ended_by = f"no new checkpoint for {self.watch.idle_timeout:g} s"
                return
            wait = self.watch.poll_seconds
            if self.watch.idle_timeout is not None:
                wait = min(wait, self.watch.idle_timeout - idle)
            if self.stop.wait(wait):
                self.ended_by = "stop requested"
                return
