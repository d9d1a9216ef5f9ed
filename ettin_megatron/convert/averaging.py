"""Checkpoint averaging: the weighted mean of K checkpoints of one model, as a weights-only checkpoint.

A warmup-stable run never decays, so its raw checkpoints are noisy; the mean of the last few is a
better model to judge (or to release) than any one of them. The sources may be saved at any TP / PP /
VPP, each its own: every one is read into the TP = PP = 1 model (``megatron_side.load_megatron_model``,
dist_checkpointing re-shards), so the mean is taken tensor by tensor over the same full tensors whatever
the layouts were.

Only model weights are averaged. The optimizer's moments, the LR schedule and the data position are not
carried (a mean of Adam moments is no optimizer state of the mean weights): the result is a weights-only
checkpoint, like a Hugging Face import, which ``pretrain --load OUT --finetune`` starts from and a plain
resume refuses. Its ettin_config.json names the sources, their training positions and weights under
``averaged_from``; it keeps their tokenizer and training objective and takes the newest one's iteration.

Memory is bounded by two models, not K: one float32 accumulator plus the one source being read (that
source's model then holds the result, in the sources' dtype).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import saved_iterations, save_checkpoint, training_position
from ..errors import ConfigError
from ..files import write_json
from .export_hf import finish_output, megatron_to_hf, prepare_output
from .hf_files import resolve_tokenizer, tokenizer_ids
from .import_hf import prepare_save
from .megatron_side import (
    build_model,
    checkpoint_dtype,
    conversion_config,
    load_megatron_model,
    read_description,
    tensors_metadata,
)

HF_RECORD = "ettin_average.json"
"""The provenance of an averaged Hugging Face export, beside its config.json."""

AVERAGED_FROM = "averaged_from"
"""The provenance's key: a list of {"checkpoint": directory, "weight", and the source's training position
("iteration", "consumed_samples", "consumed_tokens") when it had one}, in the order averaged."""


@dataclass(frozen=True)
class Source:
    """One checkpoint to average, as read before any weight: its iteration directory, ettin_config.json
    and the dtype its weights are stored in."""

    directory: Path
    description: dict
    dtype: torch.dtype


def last_checkpoints(run: str | os.PathLike, count: int) -> list[Path]:
    """The newest ``count`` complete iterations of the run saved under ``run``, oldest first."""
    if not Path(run).is_dir():
        raise ConfigError(f"--run {run} is not a directory; pass the --save directory of a run.")
    found = saved_iterations(run)
    if len(found) < count:
        raise ConfigError(f"--run {run} holds {len(found)} complete checkpoint(s), fewer than --last {count}.")
    return found[-count:]


def uniform_weights(count: int) -> list[float]:
    return [1.0 / count] * count


def exponential_weights(count: int, decay: float) -> list[float]:
    """An EMA over the checkpoints: the i-th of ``count`` (oldest first) weighs ``decay ** (count - 1 - i)``
    before normalisation, so the newest weighs most; ``decay`` 1 is the uniform mean."""
    if not 0 < decay <= 1:
        raise ConfigError(f"--decay must be in (0, 1], got {decay}.")
    return normalized([decay ** (count - 1 - i) for i in range(count)])


def normalized(weights: list[float]) -> list[float]:
    """``weights`` scaled to sum to 1; a negative weight or a zero sum is refused (the result would not be
    a mean of the checkpoints)."""
    if any(not w >= 0 for w in weights):
        raise ConfigError(f"weights must be >= 0, got {', '.join(map(str, weights))}.")
    total = sum(weights)
    if not 0 < total < float("inf"):
        raise ConfigError(f"weights must have a positive, finite sum, got {total}.")
    return [w / total for w in weights]


def read_sources(paths: list[str | os.PathLike]) -> list[Source]:
    """The checkpoints named by ``paths`` (roots or iter_N directories), each checked to be a complete,
    readable dist checkpoint, all of one model; only small files are read."""
    if len(paths) < 2:
        raise ConfigError(f"averaging needs at least 2 checkpoints, got {len(paths)}.")
    sources = []
    for path in paths:
        directory, description = read_description(path)
        sources.append(Source(directory, description, checkpoint_dtype(tensors_metadata(directory))))
    seen = {}
    for source in sources:
        key = source.directory.resolve()
        if key in seen:
            raise ConfigError(f"{source.directory} is given twice (as {seen[key]} too); name each checkpoint once.")
        seen[key] = source.directory
    _check_one_model(sources)
    return sources


def _check_one_model(sources: list[Source]) -> None:
    """Every source must describe the first one's model (each model field of ettin_config.json) and
    have been trained with its objective: a mean of two models' weights is neither."""
    first = sources[0]
    reference = {**first.description["model"], "training_objective": first.description.get("training_objective")}
    for other in sources[1:]:
        fields = {**other.description["model"], "training_objective": other.description.get("training_objective")}
        for name in dict.fromkeys([*reference, *fields]):
            if reference.get(name) != fields.get(name):
                raise ConfigError(f"{other.directory} is another model than {first.directory} ({name} "
                                  f"{fields.get(name)} vs {reference.get(name)}); average checkpoints of one model.")


def sources_tokenizer(sources: list[Source], tokenizer: str | None = None) -> str | None:
    """The tokenizer the average is recorded with, as an absolute path: ``tokenizer`` when given, else
    the one the sources name (all the same one; None when none names any)."""
    if tokenizer:
        return str(resolve_tokenizer(tokenizer).resolve())
    named = {_named_tokenizer(source) for source in sources}
    if len(named) > 1:
        raise ConfigError(f"the checkpoints name different tokenizers ({', '.join(sorted(map(str, named)))}); "
                          "pass --tokenizer to choose one.")
    return named.pop()


def _named_tokenizer(source: Source) -> str | None:
    """The absolute path of the tokenizer ``source`` names (its path may be relative to where it was saved);
    a name that is no local tokenizer (a hub name) as it is, which only an export must resolve."""
    name = source.description.get("tokenizer")
    if not name:
        return None
    try:
        return str(resolve_tokenizer(name, relative_to=source.directory).resolve())
    except ConfigError:
        return name


def provenance(sources: list[Source], weights: list[float], weighting: str) -> dict:
    """The ``averaged_from`` record: each source's directory, its training position (when it has one)
    and its weight, and how the weights were chosen."""
    entries = [{"checkpoint": str(source.directory.resolve()), "weight": weight,
                **(training_position(source.directory) or {})} for source, weight in zip(sources, weights)]
    return {AVERAGED_FROM: entries, "weighting": weighting}


@torch.no_grad()
def weighted_mean(sources: list[Source], weights: list[float]):
    """The TP = PP = 1 model whose every tensor is sum_i weights[i] * tensor_i, accumulated in float32
    with one source in memory at a time; the model is the last source's, in the sources' dtype (float32
    when their dtypes differ)."""
    mean, model = {}, None
    for source, weight in zip(sources, weights):
        model = None  # the previous source goes before the next is read
        model, _ = load_megatron_model(source.directory)
        for name, tensor in _tensors(model).items():
            if name in mean:
                mean[name].add_(tensor.float(), alpha=weight)
            else:
                mean[name] = tensor.float() * weight
    dtype = sources[0].dtype if len({source.dtype for source in sources}) == 1 else torch.float32
    if next(model.parameters()).dtype != dtype:
        model = None
        model = build_model(conversion_config(sources[0].description["model"], dtype=dtype))
    for name, tensor in _tensors(model).items():
        tensor.copy_(mean.pop(name))
    return model


def _tensors(model) -> dict:
    """The model's weights by state-dict name (the extra-state entries of its layers are not tensors)."""
    return {name: value for name, value in model.state_dict().items() if isinstance(value, torch.Tensor)}


def average_checkpoints(sources: list[Source], weights: list[float], save: str | os.PathLike, weighting: str,
                        tokenizer: str | None = None) -> Path:
    """Average ``sources`` with ``weights`` (normalized, one per source) into a new weights-only checkpoint
    under ``save`` (absent or empty); returns its iteration directory. ``weighting`` says how the weights
    were chosen, for the record."""
    save = Path(save)
    tokenizer = sources_tokenizer(sources, tokenizer)
    prepare_save(save)
    return _save_mean(sources, weights, save, provenance(sources, weights, weighting), tokenizer)


def _save_mean(sources, weights, save: Path, record: dict, tokenizer: str | None) -> Path:
    model = weighted_mean(sources, weights)
    iteration = max(int(source.description.get("iteration") or 0) for source in sources)
    return save_checkpoint(save, iteration, [model], model.config, tokenizer=tokenizer,
                           training_objective=sources[0].description.get("training_objective"), provenance=record)


def average_to_hf(sources: list[Source], weights: list[float], output: str | os.PathLike, weighting: str,
                  tokenizer: str | None = None) -> Path:
    """Average ``sources`` into the Hugging Face directory ``output``, through the export of
    ``megatron_to_hf`` (the mean is saved as a checkpoint in a staging directory first); the provenance
    goes beside config.json as ettin_average.json. ``output`` appears complete or not at all."""
    output = Path(output)
    tokenizer = sources_tokenizer(sources, tokenizer)
    tokenizer_ids(resolve_tokenizer(tokenizer), int(sources[0].description["model"]["vocab_size"]))
    record = provenance(sources, weights, weighting)
    staging = prepare_output(output)
    try:
        checkpoint = _save_mean(sources, weights, staging / "checkpoint", record, tokenizer)
        exported = megatron_to_hf(checkpoint, staging / "hf", tokenizer=tokenizer)
        write_json(exported / HF_RECORD, record)
        finish_output(exported, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output
