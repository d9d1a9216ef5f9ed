"""Turn JSONL/Parquet text shards or MDS shards into Megatron indexed datasets (.bin/.idx).

Same flags and output names as Megatron-LM's tools/preprocess_data.py; the work is done by
ettin_megatron.prep.preprocess (see its docstring for the pipeline).
"""

import argparse
import logging
import os
import signal
import sys

from ettin_megatron.cli import command_parser, non_negative_int, positive_int, run_command
from ettin_megatron.prep.framing import FRAMINGS
from ettin_megatron.prep.preprocess import PreprocessConfig, preprocess

EPILOG = """\
output: {output-prefix}_{key}_{document|sentence}.bin/.idx per --json-keys key, written under
temporary names and renamed at the end (an interrupted run leaves no complete-looking pair).
Documents are wrapped by the tokenizer's template ([CLS] ... [SEP] for ModernBERT) unless --no-wrap.
Empty or whitespace-only documents are skipped and counted; blank lines are ignored.
A bad record (malformed JSON, missing key, non-string value, invalid UTF-8) stops the run with
"file:line: what is wrong" (exit status 2) unless --skip-invalid, which skips and counts it. So does
a file that cannot be read as its name says (a corrupt Parquet file, plain text named .jsonl.gz, a
file cut short): --skip-invalid skips it (from where it breaks) and counts it.
--split-sentences: one sequence per sentence, [CLS] on the first and [SEP] (and EOD) on the last.
Output bytes do not depend on --workers.
MDS input (a directory with index.json files, e.g. Ettin's released folders): a `str` column is
tokenized as JSONL text is; an `ndarray` column (--json-keys input_ids) holds token ids, copied
unchanged (one document per sample), checked against the tokenizer's vocabulary and framed per
--ids-framing. A folder's index.json covers its tree (index.json files below it are not read again).
A missing, truncated or corrupt shard or a wrong hash stops the run naming the shard, unless
--skip-invalid, which skips and counts the shard.
"""


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input/output")
    io.add_argument("--input", required=True,
                    help="a file, a glob or a directory of .jsonl[.gz|.zst] or .parquet files, or a "
                         "directory of MDS shards (index.json)")
    io.add_argument("--json-keys", nargs="+", default=["text"], help="keys (columns) to tokenize")
    io.add_argument("--output-prefix", required=True, help="path prefix of the output files")
    tok = p.add_argument_group("tokenization")
    tok.add_argument("--tokenizer-model", required=True,
                     help="HF tokenizer directory, tokenizer.json, or hub name (needs network)")
    tok.add_argument("--tokenizer-type", default="HuggingFaceTokenizer",
                     choices=["HuggingFaceTokenizer"], help="accepted for Megatron-LM compatibility")
    tok.add_argument("--no-wrap", dest="wrap", action="store_false",
                     help="store bare tokens, without the template's [CLS]/[SEP] (Megatron-LM layout)")
    tok.add_argument("--special-token-strings", dest="split_special_tokens", action="store_false",
                     help="read a special token's string in the text ('[MASK]', '[SEP]') as that special token, "
                          "as Megatron-LM's tool does (default: as the text it is, which a model must not "
                          "mistake for a mask or a document boundary)")
    tok.add_argument("--append-eod", action="store_true",
                     help="append the end-of-document token ([SEP]) to each document (with --no-wrap)")
    tok.add_argument("--ids-framing", choices=FRAMINGS, default="keep",
                     help="MDS token-id columns: keep the ids as they are (default), wrap each document "
                          "in the template's [CLS] ... [SEP] where missing, or strip it where present")
    tok.add_argument("--split-sentences", action="store_true",
                     help="split documents into sentences with nltk punkt (offline: untrained punkt)")
    tok.add_argument("--keep-newlines", action="store_true",
                     help="with --split-sentences, keep the whitespace/newlines after each sentence")
    run = p.add_argument_group("runtime")
    run.add_argument("--workers", type=positive_int, default=os.cpu_count(),
                     help="tokenizer processes (default: all cores)")
    run.add_argument("--chunk-size", type=positive_int, default=1000,
                     help="at most this many documents per worker task; tasks also close at 256 KiB "
                          "(output does not depend on it)")
    run.add_argument("--log-interval", type=non_negative_int, default=10000,
                     help="print progress every this many documents (0: never)")
    run.add_argument("--skip-invalid", action="store_true",
                     help="skip and count bad records and unreadable files instead of stopping at the first one")
    return p


class _Terminated(BaseException):
    """SIGTERM, raised in the main process so that it unwinds as Ctrl-C does: the pool's workers end
    (ProcessPoolExecutor's shutdown) and the temporary files are removed."""


def _terminate(signum, frame):
    raise _Terminated


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _terminate)

    def run():
        args = vars(parser().parse_args(argv))
        args.pop("tokenizer_type")
        summary = preprocess(PreprocessConfig(**args))
        print(f"done: {summary}", file=sys.stderr)

    try:
        return run_command(run)
    except (KeyboardInterrupt, _Terminated) as stop:
        print("interrupted: workers stopped, no output written", file=sys.stderr)
        return 128 + (signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
