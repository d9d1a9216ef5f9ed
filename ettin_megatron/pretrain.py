"""Pretrain an Ettin encoder or decoder: ``torchrun --nproc-per-node N -m ettin_megatron.pretrain ...``.

Flags follow Megatron-LM (``--help`` lists them; ``--recipe examples/recipes/encoder/150m/phase1.yaml``
sets a whole Ettin phase). A user error (bad sizes, missing data, unknown recipe) stops the run before
any compute with one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import re
import sys

from .cli import run_command


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 when the run ends (or has nothing to do), 2 with one line for a user error."""
    from .training.arguments import parse_args
    from .training.loop import pretrain

    def train() -> None:
        pretrain(parse_args(argv))

    try:
        return run_command(train, in_launcher_terms)
    finally:
        from .runtime import destroy

        destroy()


FLAG = re.compile(r"--[a-z0-9_-]+")
"""A flag as messages name it."""


def in_launcher_terms(message: str) -> str:
    """The flags a message names, as the variables of the launcher that set them: the launchers'
    --validate-only pass sets ETTIN_LAUNCHER_FLAGS to "--flag=VARIABLE ..." (unset: the message as is).
    A flag no variable sets is one to give in EXTRA_ARGS (or after the script's name), and says so."""
    if "ETTIN_LAUNCHER_FLAGS" not in os.environ:
        return message
    from .training.arguments import build_parser

    names = dict(pair.split("=", 1) for pair in os.environ["ETTIN_LAUNCHER_FLAGS"].split())
    known = build_parser()._option_string_actions  # pretrain's flags (an unknown one is just that)
    unset = list(dict.fromkeys(f for f in FLAG.findall(message) if f in known and f not in names))
    message = FLAG.sub(lambda flag: names.get(flag.group(0), flag.group(0)), message)
    return message + (f" ({', '.join(unset)}: pretrain flags, given in EXTRA_ARGS)" if unset else "")


if __name__ == "__main__":  # dist_checkpointing's async writer spawns processes that re-import __main__
    sys.exit(main())
