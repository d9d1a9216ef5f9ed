"""The held-out table of a run: one row per checkpoint, as CSV, written whole or not at all."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write
from .heldout import Score
from .trajectory import Checkpoint

COLUMNS = ("name", "iteration", "consumed_tokens", "loss", "accuracy", "perplexity", "labelled_tokens",
           "masks", "averaged", "directory", "sanity")
"""``masks``: the digest of the inputs and labels scored (equal in every row: every checkpoint saw the
same masks); ``sanity``: the fill-mask or generation line of the checkpoint."""


@dataclass(frozen=True)
class Row:
    """One checkpoint, scored."""

    checkpoint: Checkpoint
    score: Score
    sanity: str = ""

    def values(self) -> dict:
        c, s = self.checkpoint, self.score
        return {"name": c.name, "iteration": c.iteration, "consumed_tokens": c.consumed_tokens,
                "loss": repr(s.loss), "accuracy": repr(s.accuracy), "perplexity": repr(s.perplexity),
                "labelled_tokens": s.labelled, "masks": s.digest, "averaged": int(c.averaged),
                "directory": str(c.directory), "sanity": self.sanity}


def write_table(rows: list[Row], path: Path) -> None:
    """``path`` (CSV, a header and one line per row; floats at full precision), replaced atomically."""
    with atomic_write(path) as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row.values() for row in rows)
