"""Score every checkpoint of a run on held-out data: a table and a plot of held-out loss against tokens.

``python tools/evaluate_run.py ...`` is the ``ettin-evaluate-run`` command: ettin_megatron/commands/evaluate_run.py.
"""

import sys

from ettin_megatron.commands.evaluate_run import main  # noqa: F401 (importable from here too)

if __name__ == "__main__":  # spawned helpers re-import __main__
    sys.exit(main())
