"""Show a fill-mask prediction from an exported Hugging Face encoder directory.

``python tools/fill_mask.py ...`` is the ``ettin-fill-mask`` command: ettin_megatron/commands/fill_mask.py.
"""

import sys

from ettin_megatron.commands.fill_mask import fill_mask, main  # noqa: F401 (importable from here too)

if __name__ == "__main__":  # spawned helpers (dist_checkpointing's writer) re-import __main__
    sys.exit(main())
