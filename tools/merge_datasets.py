"""Merge Megatron indexed datasets (.bin/.idx) into one, in the order given.

``python tools/merge_datasets.py ...`` is the ``ettin-merge`` command: ettin_megatron/commands/merge_datasets.py.
"""

import sys

from ettin_megatron.commands.merge_datasets import main  # noqa: F401 (importable from here too)

if __name__ == "__main__":  # spawned helpers (dist_checkpointing's writer) re-import __main__
    sys.exit(main())
