"""Export every checkpoint of a run as Hugging Face folders named as Ettin's revisions (step1000, ext500, ...).

``python tools/export_run.py ...`` is the ``ettin-export-run`` command: ettin_megatron/commands/export_run.py.
"""

import sys

from ettin_megatron.commands.export_run import main  # noqa: F401 (importable from here too)

if __name__ == "__main__":
    sys.exit(main())
