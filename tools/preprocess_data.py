"""Turn JSONL/Parquet text shards or MDS shards into Megatron indexed datasets (.bin/.idx).

``python tools/preprocess_data.py ...`` is the ``ettin-preprocess`` command: ettin_megatron/commands/preprocess_data.py.
"""

import sys

from ettin_megatron.commands.preprocess_data import main  # noqa: F401 (importable from here too)

if __name__ == "__main__":  # spawned helpers (dist_checkpointing's writer) re-import __main__
    sys.exit(main())
