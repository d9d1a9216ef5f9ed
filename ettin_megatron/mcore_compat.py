"""Where megatron-core's API differs between the releases the package supports (0.16.1 to 0.19.x): each
difference once, with the release that brought it. Nothing else in the package checks a version; where
both releases have an API, the package uses it. Each difference is detected by what megatron offers, not
by its version number.

- Without CUDA, importing megatron-core warns that Transformer Engine and apex are missing: GPU libraries,
  so on a CPU the warnings say nothing (on a GPU machine they stay). The same holds for torch's CUDA
  build (PyPI's torch for Python 3.13) on a machine without a GPU, which logs that it found no CUDA
  runtime when megatron-core imports its extension loader.
- 0.17: a synchronous dist-checkpoint save goes through megatron's async path and logs, once per
  process, that MCore's async save is deprecated in favour of NVRx's: not our choice to act on.
- 0.18: ``TransformerLayer`` takes its ``mlp`` as a callable (``MLP.as_mlp_submodule``) and rewraps a
  ``ModuleSpec(MLP)`` with a warning per layer; 0.16 / 0.17 need the ModuleSpec (``mlp_submodule``).
- 0.18: ``TransformerConfig.cuda_graph_scope`` became ``cuda_graph_modules`` (the old field warns, the
  new one's default "full" warns too): ``no_cuda_graph_modules`` says "none" in the field that exists.
- 0.18: ``DistributedDataParallel`` with the distributed optimizer logs that it computes the parameter
  layout itself when none is given, which is what we want.
- 0.19: importing ``get_megatron_optimizer``'s module imports the MIMO model, whose config class warns
  that it is experimental; a checkpoint's common state is read through torch's DCP, which warns that no
  process group exists (``check_load`` reads it before any), and a 0.16 checkpoint's ``common.pt``
  through a reader that logs its deprecation. Its rank helper, asked by megatron's loggers before a
  process group exists (``--validate-only``, a run's last lines after the group is gone), warns that it
  defaults to rank 0.
``quiet_notices`` silences exactly these messages; every other warning still shows. The package calls it
when it is imported, so this module imports megatron-core only inside its functions.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import fields
from functools import partial


def mlp_submodule(submodules):
    """The ``mlp`` of a TransformerLayer spec: MLP with these linear layers (MLPSubmodules; module doc,
    0.18)."""
    from megatron.core.transformer.mlp import MLP
    from megatron.core.transformer.spec_utils import ModuleSpec

    if hasattr(MLP, "as_mlp_submodule"):
        return partial(MLP.as_mlp_submodule, submodules=submodules)
    return ModuleSpec(module=MLP, submodules=submodules)


def no_cuda_graph_modules() -> dict:
    """The TransformerConfig field that says which modules CUDA graphs capture, set to none (module doc,
    0.18)."""
    from megatron.core.transformer import TransformerConfig

    if "cuda_graph_modules" in {f.name for f in fields(TransformerConfig)}:
        return {"cuda_graph_modules": []}
    return {"cuda_graph_scope": []}


_LOGGED = {
    "megatron.core.dist_checkpointing.strategies.torch": "MCore's async save is deprecated",  # 0.17
    "megatron.core.dist_checkpointing.strategies.common": "load_common is deprecated",  # 0.19
    "megatron.core.distributed.distributed_data_parallel": "full_param_layout not provided",  # 0.18
}
_WARNED = (
    "MimoModelConfig is experimental",  # 0.19
    "torch.distributed is disabled, unavailable or uninitialized",  # 0.19: torch DCP without a process group
    "Could not determine rank from torch.distributed",  # 0.19: its rank helper, asked before any process group
)
_WITHOUT_CUDA = ("Transformer Engine and Apex are not installed", "Apex is not installed")
_LOGGED_WITHOUT_CUDA = {"torch.utils.cpp_extension": "No CUDA runtime is found"}


class _Drop(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def quiet_notices(cuda: bool) -> None:
    """Silence the notices listed in the module doc (idempotent); ``cuda``: whether a GPU is there, whose
    libraries' absence then matters."""
    for logger, fragment in {**_LOGGED, **({} if cuda else _LOGGED_WITHOUT_CUDA)}.items():
        target = logging.getLogger(logger)
        if not any(isinstance(f, _Drop) and f.fragment == fragment for f in target.filters):
            target.addFilter(_Drop(fragment))
    for fragment in _WARNED + (() if cuda else _WITHOUT_CUDA):
        warnings.filterwarnings("ignore", message=f".*{fragment}")
