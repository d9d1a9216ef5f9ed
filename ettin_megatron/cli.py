"""What every command line of the package does with a mistake a user can fix: one line on stderr,
``error: ...``, and exit status 2, instead of a traceback (``EttinError`` and its kinds, errors.py).

Argparse's own refusals (an unknown flag, a value out of its range) are such mistakes too: the
parsers here raise them as an InputError, and every command parses inside ``run_command``. Each
numeric flag declares its range once, as its ``type=``: one of the converters below.
"""

from __future__ import annotations

import argparse
import math
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


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose refusals are InputErrors, for run_command to print in one line
    (argparse's own prints the usage, then the message, and exits)."""

    def error(self, message: str):
        raise InputError(message.removeprefix("argument "))


def command_parser(doc: str, **options) -> CommandParser:
    """The parser of a command whose module docstring is ``doc``: its first line as the description, no
    abbreviated flags (a prefix of one flag must not silently mean another)."""
    return CommandParser(description=doc.splitlines()[0], allow_abbrev=False, **options)


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


def _ranged(kind: type, description: str, accepts: Callable[[float], bool]) -> Callable:
    """An argparse ``type=`` reading ``kind`` from a flag's text (or a recipe's number) and refusing,
    with what it must be, a value that ``accepts`` refuses, infinity, or text that is not a number:
    a 0 or negative size would otherwise pass the parser and fail later, deep in training."""

    def convert(text):
        try:
            value = kind(text)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
            value = math.nan  # refused below, as every comparison with NaN is false
        if not (accepts(value) and value != math.inf):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text}")
        return value

    return convert


positive_int = _ranged(int, "a positive integer", lambda n: n > 0)
non_negative_int = _ranged(int, "an integer >= 0", lambda n: n >= 0)
positive_float = _ranged(float, "a positive number", lambda x: x > 0)
non_negative_float = _ranged(float, "a number >= 0", lambda x: x >= 0)
fraction = _ranged(float, "a number from 0 to 1", lambda x: 0 <= x <= 1)
fraction_below_one = _ranged(float, "a number >= 0 and < 1", lambda x: 0 <= x < 1)
