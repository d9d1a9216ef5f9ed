"""Write the offline sample corpus: English text that ships with CPython, as JSONL.

``python tools/build_sample_corpus.py ...`` is the ``ettin-sample-corpus`` command: ettin_megatron/commands/build_sample_corpus.py.
"""

import sys

from ettin_megatron.commands.build_sample_corpus import main  # noqa: F401 (importable from here too)

if __name__ == "__main__":  # spawned helpers (dist_checkpointing's writer) re-import __main__
    sys.exit(main())
