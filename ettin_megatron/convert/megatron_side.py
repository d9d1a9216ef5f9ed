"""The Megatron side of a conversion: one process, the TP = PP = 1 model, dist checkpoints in and out.

dist_checkpointing re-shards on load, so a checkpoint saved at any TP / PP (/ VPP) loads into the
TP = PP = 1 ``EttinModel`` in a gloo world of one (no torchrun), and a checkpoint saved from it loads
at any layout later. Every check that can fail (not a checkpoint, unreadable metadata, a data file
missing or cut short, a tensor whose shape disagrees with ettin_config.json) runs before weights are
read and raises a one-line ConfigError.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from torch.distributed.checkpoint import CheckpointException, FileSystemReader

from ..checkpoint import CONFIG_FILE, load_checkpoint, read_checkpoint_config, resolve_checkpoint_dir
from ..config import ATTENTIONS, EttinConfig, ettin_config
from ..errors import ConfigError, one_line
from ..model import EttinModel
from .pickle_guard import check_checkpoint_pickles


def single_rank_world() -> None:
    """A gloo world of one with TP = PP = 1 (reused when the caller already made one)."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise ConfigError("checkpoint conversion runs in one process; run it with python, not torchrun.")
    if parallel_state.model_parallel_is_initialized() and (
        parallel_state.get_tensor_model_parallel_world_size() == 1
        and parallel_state.get_pipeline_model_parallel_world_size() == 1
    ):
        return
    from ..runtime import initialize
    from ..runtime.distributed import free_port

    if not torch.distributed.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("checkpoint conversion runs in one process; run it with python, not torchrun.")
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0",
                          WORLD_SIZE="1")
    initialize()


def conversion_config(model_fields: dict, attention: str | None = None,
                      dtype: torch.dtype = torch.float32) -> EttinConfig:
    """The TP = PP = 1 config of a model description, optionally with the other attention."""
    if attention is not None and attention not in ATTENTIONS:
        raise ConfigError(f"unknown attention {attention!r}; use one of {', '.join(ATTENTIONS)}.")
    fields = dict(model_fields)
    if attention is not None:
        fields["attention"] = attention
    return ettin_config(None, **fields, params_dtype=dtype, bf16=dtype == torch.bfloat16,
                        fp16=dtype == torch.float16, perform_initialization=False)


def build_model(config: EttinConfig) -> EttinModel:
    single_rank_world()
    return EttinModel(config, spec="local").eval()


def read_description(path: str | Path) -> tuple[Path, dict]:
    """(iteration directory, ettin_config.json) of a checkpoint root or iteration directory."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist; pass a checkpoint directory (the --save of a run).")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory; pass a checkpoint directory (the --save of a run).")
    directory = resolve_checkpoint_dir(path)
    return directory, read_checkpoint_config(directory)


def tensors_metadata(directory: Path) -> dict:
    """Global shape and dtype of every tensor of a dist checkpoint, read without loading weights; its
    data files are checked to be all there (``_check_data_files``)."""
    check_checkpoint_pickles(directory)
    try:
        metadata = dist_checkpointing.load_tensors_metadata(str(directory))
    except Exception as exc:  # megatron / torch DCP raise many types for a broken directory
        raise ConfigError(f"{directory} is not a readable dist checkpoint ({one_line(exc)}).") from None
    _check_data_files(directory)
    return metadata


def _check_data_files(directory: Path) -> None:
    """Every data file (``*.distcp``) the checkpoint's index lists is there, as long as the index says.
    A copy that lost or cut short one would otherwise fail halfway through loading, as torch's
    CheckpointException: a BaseException whose message is a traceback per rank. The index is unpickled
    here, so only after check_checkpoint_pickles passed it."""
    needed = {}
    for item in FileSystemReader(str(directory)).read_metadata().storage_data.values():
        needed[item.relative_path] = max(needed.get(item.relative_path, 0), item.offset + item.length)
    for name, size in sorted(needed.items()):
        path = directory / name
        if not path.is_file():
            raise ConfigError(f"{path} is missing (the checkpoint's .metadata lists it); copy the checkpoint "
                              "again, all its files.")
        if path.stat().st_size < size:
            raise ConfigError(f"{path} holds {path.stat().st_size} bytes but the checkpoint's .metadata needs "
                              f"{size}: it was cut short; copy the checkpoint again.")


def checkpoint_dtype(metadata: dict) -> torch.dtype:
    weight = metadata.get("embedding.word_embeddings.weight")
    return weight.dtype if weight is not None else torch.float32


def check_shapes(model: EttinModel, metadata: dict, where: Path) -> None:
    """Every model tensor must be in the checkpoint with the shape ettin_config.json implies."""
    for entry in _sharded_tensors(model.sharded_state_dict()):
        saved = metadata.get(entry.key)
        if saved is None:
            raise ConfigError(f"{where} has no tensor {entry.key!r}; it is not a checkpoint of this model.")
        if tuple(saved.global_shape) != tuple(entry.global_shape):
            raise ConfigError(
                f"shape mismatch: {entry.key} is {tuple(saved.global_shape)} in {where} but "
                f"{CONFIG_FILE} implies {tuple(entry.global_shape)}."
            )


def _sharded_tensors(tree):
    if isinstance(tree, ShardedTensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _sharded_tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _sharded_tensors(value)


def load_megatron_model(path: str | Path, attention: str | None = None,
                        dtype: torch.dtype | None = None) -> tuple[EttinModel, dict]:
    """The TP = PP = 1 model of a checkpoint saved at any layout, in the checkpoint's dtype (or ``dtype``:
    the held-out evaluation scores every checkpoint in float32).

    ``attention`` rebuilds it as the other architecture (same weights). Returns (model, description).
    """
    directory, description = read_description(path)
    config_fields = description["model"]
    metadata = tensors_metadata(directory)
    config = conversion_config(config_fields, attention, dtype or checkpoint_dtype(metadata))
    model = build_model(config)
    check_shapes(model, metadata, directory)
    try:
        load_checkpoint(directory, [model])
    except CheckpointException as exc:  # torch's, a BaseException: {rank: (exception, traceback)}
        failure, _ = next(iter(exc.failures.values()))
        raise ConfigError(f"loading {directory} failed ({one_line(failure)}).") from None
    except Exception as exc:
        raise ConfigError(f"loading {directory} failed ({one_line(exc)}).") from None
    return model, {**description, "directory": str(directory)}
