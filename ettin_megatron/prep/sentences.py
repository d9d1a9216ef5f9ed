"""Splitting text into sentences for --split-sentences (Megatron-LM's nltk Punkt splitter)."""

import logging
from typing import Callable, List

log = logging.getLogger(__name__)


def sentence_splitter(keep_newlines: bool, quiet: bool = False) -> Callable[[str], List[str]]:
    """An nltk Punkt sentence splitter, as Megatron-LM's --split-sentences uses.

    The trained English model (nltk's punkt_tab data) is used when nltk finds it locally; we never
    download, so without it we fall back to an untrained Punkt (splits after ., ? and ! before a
    capital) and warn unless `quiet` (workers pass it: the main process has already warned once).
    With `keep_newlines` the whitespace after a sentence stays attached to it (Megatron-LM's
    CustomLanguageVars), so newlines survive detokenization.
    """
    from nltk.tokenize import punkt

    class KeepNewlines(punkt.PunktLanguageVars):
        _period_context_fmt = r"""
            \S*                          # some word material
            %(SentEndChars)s             # a potential sentence ending
            \s*                          # keep the following whitespace (newlines)
            (?=(?P<after_tok>
                %(NonWord)s              # either other punctuation
                |
                (?P<next_tok>\S+)        # or the next word
            ))"""

    splitter = punkt.PunktSentenceTokenizer(
        lang_vars=KeepNewlines() if keep_newlines else punkt.PunktLanguageVars()
    )
    try:
        splitter._params = punkt.PunktTokenizer("english")._params
    except LookupError:
        if not quiet:
            log.warning("nltk punkt_tab data not found; splitting sentences with an untrained Punkt")
    return splitter.tokenize
