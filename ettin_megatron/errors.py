"""The one base class of the errors a user must fix.

``ConfigError`` (config.py), ``InputError`` (data/readers.py) and ``TokenizerNotFound``
(data/tokenizer.py) each name where the problem was found; a command line catches ``EttinError``
and prints its one-line message (exit status 2) instead of a traceback, whichever of them it was.
It is a ``ValueError`` so that callers that catch bad values in general keep catching these.
"""


class EttinError(ValueError):
    """Something the user must fix; str() is one line that says what to change."""
