"""Continue a prompt with an exported Ettin decoder (a Hugging Face directory), greedily.

``python tools/generate.py ...`` is the ``ettin-generate`` command: ettin_megatron/commands/generate.py.
"""

import sys

from ettin_megatron.commands.generate import main  # noqa: F401 (importable from here too)

if __name__ == "__main__":  # spawned helpers (dist_checkpointing's writer) re-import __main__
    sys.exit(main())
