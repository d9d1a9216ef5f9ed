"""The checkpoints of a run, in training order, each placed on the tokens-consumed axis.

A training checkpoint says where the run stood (checkpoint.training_position). An averaged checkpoint
has no training state: its ettin_config.json records its sources and their positions (convert/averaging.py,
``averaged_from``), and it is placed at its last source's position, the moment of training at which the
average could first be made, so that the plot compares it with the last single checkpoint it contains at
the same abscissa. A checkpoint with neither (a Hugging Face import) has no position: it is scored but
not plotted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import CONFIG_FILE, read_checkpoint_config, saved_iterations, training_position
from ..convert.averaging import AVERAGED_FROM
from ..errors import ConfigError, one_line


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint to score: its iteration directory and its place in the run."""

    directory: Path
    description: dict
    """Its ettin_config.json."""
    iteration: int | None
    consumed_tokens: int | None
    averaged_from: tuple[Path, ...] = field(default=())

    @property
    def name(self) -> str:
        """The run root and iteration (``run/iter_0000008``): unique across the runs scored together."""
        return f"{self.directory.parent.name}/{self.directory.name}"

    @property
    def averaged(self) -> bool:
        return bool(self.averaged_from)


def find_checkpoints(paths: list[str]) -> list[Checkpoint]:
    """The checkpoints named by ``paths`` (a run's --save root: all its complete iterations, oldest first;
    or one iter_N directory), in the order given; one-line ConfigErrors for a path that holds none."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"--load {path} does not exist; pass a run's --save directory or an iter_N directory.")
        directories = [path] if (path / CONFIG_FILE).is_file() else saved_iterations(path)
        if not directories:
            raise ConfigError(f"--load {path} holds no checkpoint (no complete iter_N directory with "
                              f"{CONFIG_FILE}); pass a run's --save directory or an iter_N directory.")
        found += [placed(directory) for directory in directories]
    return found


def placed(directory: Path) -> Checkpoint:
    """The checkpoint at ``directory`` with its iteration and tokens consumed (module doc)."""
    description = read_checkpoint_config(directory)
    sources = description.get(AVERAGED_FROM) or ()
    try:
        position = training_position(directory)
    except Exception as exc:  # dist_checkpointing and torch.load raise many types
        raise ConfigError(f"{directory} is incomplete or damaged ({one_line(exc)}); leave it out of --load.") from None
    if position is None and sources:  # as recorded when averaged: the sources may have been deleted since
        position = max(sources, key=lambda source: source.get("iteration") or -1)
    iteration = position.get("iteration") if position else description.get("iteration")
    return Checkpoint(directory, description, iteration, position and position.get("consumed_tokens"),
                      tuple(Path(source["checkpoint"]) for source in sources))
