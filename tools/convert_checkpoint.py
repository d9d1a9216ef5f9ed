"""Convert Ettin checkpoints between Megatron (dist checkpoint, any TP/PP) and Hugging Face.

``python tools/convert_checkpoint.py ...`` is the ``ettin-convert`` command: ettin_megatron/commands/convert_checkpoint.py.
"""

import sys

from ettin_megatron.commands.convert_checkpoint import main  # noqa: F401 (importable from here too)

if __name__ == "__main__":  # spawned helpers (dist_checkpointing's writer) re-import __main__
    sys.exit(main())
