"""Average the model weights of K checkpoints of one model (any TP / PP each) into one.

``python tools/average_checkpoints.py ...`` is the ``ettin-average`` command: ettin_megatron/commands/average_checkpoints.py.
"""

import sys

from ettin_megatron.commands.average_checkpoints import main  # noqa: F401 (importable from here too)

if __name__ == "__main__":  # spawned helpers (dist_checkpointing's writer) re-import __main__
    sys.exit(main())
