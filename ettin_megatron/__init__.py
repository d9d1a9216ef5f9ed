"""ettin-megatron: the Ettin encoder/decoder suite on Megatron-Core."""

import torch

from .mcore_compat import quiet_notices

__version__ = "0.1.0"

quiet_notices(cuda=torch.cuda.is_available())  # megatron-core's notices that say nothing to our users
