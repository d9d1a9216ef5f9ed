"""Every error a user must fix: one base class and one class per place a problem is found.

A command line catches ``EttinError`` and prints its one-line message (exit status 2) instead of a
traceback, whichever of these it was. It is a ``ValueError`` so that callers that catch bad values in
general keep catching these. This module is the ground floor: it imports nothing of the package, and
every other module may import it.
"""


class EttinError(ValueError):
    """Something the user must fix; str() is one line that says what to change."""

    exit_status = 2


class ConfigError(EttinError):
    """A configuration a user asked for that cannot work; the message says what to change."""


class InputError(EttinError):
    """Something the user must fix: bad data, bad arguments, or a run that could not finish (a killed
    worker). str() is one line, `path:line: what is wrong (hint)` where a line is known; the CLIs
    print it without a traceback and exit 2.
    """


class TokenizerNotFound(EttinError):
    """The tokenizer path or name does not resolve to a tokenizer (raised before any work starts)."""


class SampleError(InputError):
    """A training sample that could not be read, in one line.

    Raised in a data-loader worker, torch rebuilds it in the training process from its text, which by
    then holds the worker's whole traceback: the last line of that text is the message, so that is what
    is kept."""

    def __init__(self, message: str):
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class NonFiniteError(EttinError):
    """The loss or the gradients of a step are NaN or Inf; the message says where in the data."""


class Interrupted(EttinError):
    """Ctrl-C (SIGINT) stopped a run that has no --exit-signal-handler; the message says what was kept."""

    exit_status = 130  # the shell's status for a process ended by SIGINT


def one_line(exc: BaseException) -> str:
    """A caught exception as an error message quotes it: its type and the first line of its message
    (torch and megatron raise messages of many lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
