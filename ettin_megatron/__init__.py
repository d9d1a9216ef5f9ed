"""ettin-megatron: the Ettin encoder/decoder suite on Megatron-Core."""

import warnings

import torch

__version__ = "0.1.0"

if not torch.cuda.is_available():
    # Megatron-Core warns at import time that Transformer Engine and apex are missing. Both are GPU
    # libraries, so without CUDA the warnings carry no information; on a GPU machine they stay.
    warnings.filterwarnings("ignore", message=r"(Transformer Engine and Apex are|Apex is) not installed",
                            category=UserWarning)
