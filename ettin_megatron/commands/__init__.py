"""The package's command lines, one module each, installed as ``ettin-*`` commands (setup.cfg) and run as
``python tools/NAME.py`` too. Each turns a user's mistake into one line and exit status 2 (cli.py)."""

from ettin_megatron.cli import command_parser


def model_and_text_parser(doc: str, model_help: str, text_help: str, text_name: str = "text"):
    """The parser of a command that runs an exported Hugging Face directory (``model_dir``) on a text
    (``text``, shown as ``text_name``): fill_mask and generate."""
    parser = command_parser(doc)
    parser.add_argument("model_dir", help=model_help)
    parser.add_argument("text", metavar=text_name, help=text_help)
    return parser
