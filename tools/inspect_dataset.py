"""Show an indexed dataset by eye: documents, tokens, a length histogram and decoded samples.

``python tools/inspect_dataset.py ...`` is the ``ettin-inspect`` command: ettin_megatron/commands/inspect_dataset.py.
"""

import sys

from ettin_megatron.commands.inspect_dataset import main  # noqa: F401 (importable from here too)

if __name__ == "__main__":  # spawned helpers (dist_checkpointing's writer) re-import __main__
    sys.exit(main())
