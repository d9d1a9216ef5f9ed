"""``python tests/training/pretrain_cli.py FLAGS...``: the pretrain command line (ettin_megatron.pretrain.main,
exit status included) on the tests' small vocabulary (training_data.SPECIAL), for torchrun launches."""

import sys

from ettin_megatron.pretrain import main
from tests.training.training_data import SPECIAL

if __name__ == "__main__":  # dist_checkpointing's writer may spawn processes that re-import __main__
    sys.exit(main(sys.argv[1:], special_tokens=SPECIAL))
