"""The package's command lines, one module each, installed as ``ettin-*`` commands (setup.cfg) and run as
``python tools/NAME.py`` too. Each turns a user's mistake into one line and exit status 2 (cli.py)."""

import warnings

from ettin_megatron.cli import command_parser, run_command


def model_and_text_parser(doc: str, model_help: str, text_help: str, text_name: str = "text"):
    """The parser of a command that runs an exported Hugging Face directory (``model_dir``) on a text
    (``text``, shown as ``text_name``): fill_mask and generate."""
    parser = command_parser(doc)
    parser.add_argument("model_dir", help=model_help)
    parser.add_argument("text", metavar=text_name, help=text_help)
    return parser


def run_conversion(run, parser, argv) -> int:
    """``run(parser().parse_args(argv))`` through run_command, for a command that converts checkpoints: the
    per-tensor loading bar, transformers' warnings (errors are ours, in one line) and megatron's import-time
    notices (no TE / Apex, deprecations), which say nothing about a conversion, are silenced first, before
    megatron is imported."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"megatron\.")
    return run_command(lambda: run(parser().parse_args(argv)))
