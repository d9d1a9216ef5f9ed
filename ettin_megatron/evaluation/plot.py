"""Held-out loss against tokens consumed, as a PNG: what people would rather look at than the table.

Trained checkpoints are a line of dots in training order; averaged checkpoints are separate stars at
their last source's tokens (trajectory.py), each labelled with how many checkpoints it averages.
matplotlib (the ``plot`` extra) draws off-screen (Agg).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write
from .table import Row

OBJECTIVES = {"mlm": "MLM (15% masks)", "mntp": "MNTP (15% masks)", "clm": "CLM"}


def plot_available() -> None:
    """Refuse, before any scoring, to run without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("the plot needs matplotlib: pip install 'ettin-megatron[plot]'.") from None


def plot_losses(rows: list[Row], path: Path, title: str, objective: str) -> int:
    """Write the plot of ``rows``, scored with ``objective``, to ``path`` (replaced atomically); returns how
    many points it shows
    (a checkpoint without a position, a Hugging Face import, has no abscissa and is left out)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.ticker import EngFormatter

    shown = [row for row in rows if row.checkpoint.consumed_tokens is not None]
    trained = sorted((row for row in shown if not row.checkpoint.averaged), key=lambda row: row.checkpoint.consumed_tokens)
    averaged = [row for row in shown if row.checkpoint.averaged]
    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=120)
    if trained:
        axes.plot([row.checkpoint.consumed_tokens for row in trained], [row.score.loss for row in trained],
                  marker="o", color="tab:blue", label="checkpoint")
    if averaged:
        axes.scatter([row.checkpoint.consumed_tokens for row in averaged], [row.score.loss for row in averaged],
                     marker="*", s=220, color="tab:orange", edgecolor="black", zorder=3,
                     label="averaged checkpoint (at its last source)")
        # Labels left of their stars, each a line above the one before: averages of one run's last
        # checkpoints sit at one abscissa, often a hair apart in loss.
        for i, row in enumerate(sorted(averaged, key=lambda row: row.score.loss)):
            axes.annotate(f"avg of {len(row.checkpoint.averaged_from)}: {row.score.loss:.3f}",
                          (row.checkpoint.consumed_tokens, row.score.loss), textcoords="offset points",
                          xytext=(-14, 12 * i), ha="right", va="center", fontsize=9,
                          arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5})
    axes.set_title("\n".join(line for part in title.splitlines() for line in textwrap.wrap(part, 90)), fontsize=10)
    axes.set_xlabel("tokens consumed (input tokens)")
    axes.set_ylabel(f"held-out {OBJECTIVES[objective]} loss (nats / labelled token)")
    axes.xaxis.set_major_formatter(EngFormatter(sep=""))
    axes.grid(True, alpha=0.3)
    if shown:
        axes.legend()
    figure.tight_layout()
    with atomic_write(path, "wb") as file:
        figure.savefig(file, format="png")
    pyplot.close(figure)
    return len(shown)
