"""Pretrain an Ettin encoder or decoder: ``torchrun --nproc-per-node N -m ettin_megatron.pretrain ...``.

Flags follow Megatron-LM (``--help`` lists them; ``--recipe examples/recipes/encoder/150m/phase1.yaml``
sets a whole Ettin phase). A user error (bad sizes, missing data, unknown recipe) stops the run before
any compute with one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import re
import sys

from .errors import EttinError


def main(argv: list[str] | None = None, special_tokens: dict | None = None) -> int:
    """The command line; ``special_tokens`` as ``pretrain``'s (tests on small synthetic vocabularies)."""
    from .training.arguments import parse_args
    from .training.loop import pretrain

    try:
        args = parse_args(argv)
        pretrain(args, special_tokens)
    except EttinError as error:
        print(f"error: {in_launcher_terms(str(error))}", file=sys.stderr, flush=True)
        return 2
    finally:
        from .runtime import destroy

        destroy()
    return 0


def in_launcher_terms(message: str) -> str:
    """The flags a message names, as the variables of the launcher that set them: the launchers'
    --validate-only pass sets ETTIN_LAUNCHER_FLAGS to "--flag=VARIABLE ..." (unset: the message as is)."""
    names = dict(pair.split("=", 1) for pair in os.environ.get("ETTIN_LAUNCHER_FLAGS", "").split())
    return re.sub(r"--[a-z0-9-]+", lambda flag: names.get(flag.group(0), flag.group(0)), message)


if __name__ == "__main__":  # dist_checkpointing's async writer spawns processes that re-import __main__
    sys.exit(main())
