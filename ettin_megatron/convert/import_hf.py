"""hf-to-megatron: a Hugging Face ModernBERT directory -> a dist checkpoint.

The weights are read from safetensors only (never pickle), checked name by name and shape by shape
against the config before anything is copied, mapped through ``hf_mapping`` into the TP = PP = 1
``EttinModel`` and saved with ``save_checkpoint``. dist_checkpointing re-shards on load, so the result
loads at any TP / PP / VPP; ``target_tp`` / ``target_pp`` check that the model can be split that way
(heads, layers and vocabulary divisible) so that a layout the model cannot take fails now, not at
``--load``. The checkpoint holds weights only: train from it with ``--load DIR --finetune`` (fresh
optimizer, schedule and data position). The tokenizer files are copied into ``{save}/tokenizer``
and named in ettin_config.json, so megatron-to-hf finds them again.

Memory: the model once, plus the re-laid attention matrices; every other tensor is read from the
file straight into its parameter.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..cli import check_writable
from ..config import ettin_config
from ..errors import ConfigError
from .hf_files import copy_tokenizer, read_hf_config_json, resolve_tokenizer, tokenizer_ids
from .hf_mapping import TRAINING_OBJECTIVE_KEY, check_hf_tensor, ettin_overrides_from_hf, from_hf_state_dict, hf_shapes
from .megatron_side import build_model, conversion_config
from .safetensors_io import HFWeights

TIED = "decoder.weight"
_QKV = ("attn.Wqkv.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight")


def read_hf_model_fields(hf_dir: str | os.PathLike) -> dict:
    """EttinConfig fields of a HF ModernBERT directory (one-line errors for anything else)."""
    read_hf_config_json(hf_dir)
    from transformers import AutoConfig

    try:
        hf = AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    except Exception as exc:  # transformers raises several types for a malformed config
        raise ConfigError(f"{hf_dir}/config.json cannot be read by transformers ({str(exc).splitlines()[0]}).") from None
    fields = ettin_overrides_from_hf(hf)
    fields["init_cutoff_factor"] = float(getattr(hf, "initializer_cutoff_factor", 2.0))
    return fields


def _check_tensors(weights: HFWeights, config) -> None:
    """Every tensor the mapping needs is present with the right shape, and nothing unknown is: read
    from the file headers, before the model is built or any weight is read."""
    expected = hf_shapes(config)
    for name in expected:
        check_hf_tensor(name, weights.shape(name) if name in weights else None, expected)
    unknown = sorted(set(weights) - set(expected) - {TIED})
    if unknown:
        raise ConfigError(
            f"the Hugging Face checkpoint has tensors an Ettin model does not ({', '.join(unknown[:3])}"
            f"{', ...' if len(unknown) > 3 else ''}); is it a ModernBERT variant with extra parts?"
        )
    if TIED in weights and weights.shape(TIED) != expected["model.embeddings.tok_embeddings.weight"]:
        raise ConfigError(f"shape mismatch: {TIED} is {weights.shape(TIED)}, not the embedding's shape.")


class _Deferred(Mapping):
    """The weights as ``from_hf_state_dict`` sees them: the attention matrices (which it re-lays) as
    tensors, every other tensor as its file location, which it passes through untouched; those are
    then read straight into the model's parameters, so no second copy of the model is ever held."""

    def __init__(self, weights: HFWeights):
        self._weights = weights

    def __getitem__(self, name: str):
        return self._weights[name] if name.endswith(_QKV) else self._weights.entry(name)

    def __contains__(self, name) -> bool:
        return name in self._weights

    def __iter__(self):
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)


def _load_weights(model, weights: HFWeights, source_config) -> None:
    """Copy the HF tensors into ``model`` through the mapping, one tensor at a time."""
    mapped = from_hf_state_dict(_Deferred(weights), source_config)
    params = {name: t for name, t in model.state_dict().items() if "_extra_state" not in name}
    missing = sorted(set(params) - set(mapped))
    if missing:
        raise ConfigError(f"the mapping leaves {missing[0]} unset; hf_mapping does not cover this model.")
    with torch.no_grad():
        for name in list(mapped):
            value, target = mapped.pop(name), params[name]
            if isinstance(value, torch.Tensor):
                target.copy_(value)
            elif value.shape == tuple(target.shape) and value.dtype == target.dtype and target.is_contiguous():
                value.read_into(target)
            else:
                target.copy_(value.load())


def prepare_save(save: Path) -> None:
    """Refuse, before any work, a --save that holds anything or cannot be written."""
    if save.exists() and (not save.is_dir() or any(save.iterdir())):
        raise ConfigError(f"--save {save} exists and is not an empty directory; choose a new checkpoint directory.")
    check_writable(save, "--save")


def hf_to_megatron(hf_dir: str | os.PathLike, save: str | os.PathLike, attention: str | None = None,
                   iteration: int = 0, target_tp: int = 1, target_pp: int = 1, tokenizer: str | None = None,
                   require_tokenizer: bool = False) -> Path:
    """Convert ``hf_dir`` into a dist checkpoint under ``save`` (iteration ``iteration``); returns
    the iteration directory. ``attention`` imports the weights as the other architecture;
    ``tokenizer`` replaces the directory's own tokenizer files (which are optional, unless
    ``require_tokenizer``: --verify needs one, and should fail before the conversion, not after)."""
    hf_dir, save = Path(hf_dir), Path(save)
    fields = read_hf_model_fields(hf_dir)
    mntp = read_hf_config_json(hf_dir).get(TRAINING_OBJECTIVE_KEY) == "mntp" and attention in (None, "bidirectional")
    weights = HFWeights(hf_dir)
    target_fields = {**fields, **({"attention": attention} if attention else {})}
    ettin_config(None, **target_fields, tensor_model_parallel_size=target_tp, pipeline_model_parallel_size=target_pp)
    if tokenizer:
        tokenizer_path = resolve_tokenizer(tokenizer)
    else:
        tokenizer_path = hf_dir if (hf_dir / "tokenizer.json").is_file() else None
    if tokenizer_path is None and require_tokenizer:
        raise ConfigError(f"{hf_dir} has no tokenizer.json; pass --tokenizer DIR (--verify tokenizes sample "
                          "text with it).")
    if tokenizer_path is not None:
        tokenizer_ids(tokenizer_path, fields["vocab_size"])
    prepare_save(save)

    embedding = "model.embeddings.tok_embeddings.weight"
    dtype = weights.dtype(embedding) if embedding in weights else torch.float32
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"{embedding} is stored as {dtype}; expected float32, bfloat16 or float16.")
    source_config = conversion_config(fields, None, dtype)
    _check_tensors(weights, source_config)
    model = build_model(conversion_config(fields, attention, dtype))
    _load_weights(model, weights, source_config)
    if TIED in weights and not torch.equal(weights[TIED], model.state_dict()["embedding.word_embeddings.weight"]):
        raise ConfigError(f"{TIED} differs from the token embedding; Ettin models tie them.")

    tokenizer_copy = None
    if tokenizer_path is not None:
        copy_tokenizer(tokenizer_path, save / "tokenizer")
        tokenizer_copy = str((save / "tokenizer").resolve())
    try:
        return save_checkpoint(save, iteration, [model], model.config, tokenizer=tokenizer_copy,
                               training_objective="mntp" if mntp else None)
    except BaseException:
        shutil.rmtree(save / "tokenizer", ignore_errors=True)
        raise


__all__ = ["hf_to_megatron", "prepare_save", "read_hf_model_fields"]
