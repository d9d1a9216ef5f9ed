"""Train a small byte-level BPE tokenizer with ModernBERT's special tokens and [CLS] $A [SEP] template.

``python tools/train_tokenizer.py ...`` is the ``ettin-train-tokenizer`` command: ettin_megatron/commands/train_tokenizer.py.
"""

import sys

from ettin_megatron.commands.train_tokenizer import main  # noqa: F401 (importable from here too)

if __name__ == "__main__":  # spawned helpers (dist_checkpointing's writer) re-import __main__
    sys.exit(main())
