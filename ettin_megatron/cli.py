"""What every command line of the package does with a mistake a user can fix: one line on stderr,
``error: ...``, and exit status 2, instead of a traceback (``EttinError`` and its kinds, errors.py)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Callable

from .errors import EttinError, InputError


def run_command(body: Callable[[], int | None], translate: Callable[[str], str] = str) -> int:
    """``body()``'s exit status (None: 0), or the error's (2; 130 for an interrupt) after printing the user
    error it raised in one line; ``translate`` rewrites the message (the launchers name their variables
    instead of flags)."""
    try:
        return body() or 0
    except EttinError as error:
        print(f"error: {translate(str(error))}", file=sys.stderr, flush=True)
        return error.exit_status


def command_parser(doc: str, **options) -> argparse.ArgumentParser:
    """The parser of a command whose module docstring is ``doc``: its first line as the description, no
    abbreviated flags (a prefix of one flag must not silently mean another)."""
    return argparse.ArgumentParser(description=doc.splitlines()[0], allow_abbrev=False, **options)


def check_writable(directory: str | os.PathLike, flag: str) -> None:
    """Refuse, in one line naming ``flag``, an output ``directory`` no file can be created in (read-only,
    or below a file), before a command does any work rather than with a traceback once it writes. The
    directory need not exist yet: its nearest existing ancestor is tried, with an unnamed temporary
    file, so nothing is created or left behind."""
    existing = os.path.abspath(directory)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise InputError(f"{flag}: cannot write in {existing} ({exc.strerror or exc}); choose a writable "
                         "location") from None
