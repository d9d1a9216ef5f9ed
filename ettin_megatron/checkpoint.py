"""The on-disk checkpoint layout, shared by training and the conversion tools.

Megatron-LM's layout, written with Megatron-Core's dist_checkpointing so that a checkpoint saved at
one TP / PP / VPP loads at any other::

    {root}/latest_checkpointed_iteration.txt     the iteration to resume from ("1200")
    {root}/iter_0001200/                         a dist_checkpointing directory:
        "model" (or "model0", "model1", ... per virtual pipeline chunk), plus whatever the caller adds
        (optimizer, scheduler, RNG, data position)
    {root}/iter_0001200/ettin_config.json        the model's defining fields (config.MODEL_FIELDS;
                                                 older checkpoints name the attention "objective"),
                                                 the tokenizer it was trained with and its training
                                                 objective (mlm, clm or mntp: an MNTP encoder's
                                                 output at i predicts token i + 1, see export_hf);
                                                 an average adds "averaged_from" (convert/averaging.py)

A save goes to ``iter_N.tmp`` and is renamed once every rank has finished; only then does the
``latest`` file move (written to a temp file and renamed). A save killed midway leaves the previous
checkpoint loadable and selected; a save that fails with an exception on rank 0 (the writer) also
removes its ``iter_N.tmp``.
Re-saving an existing ``iter_N`` moves the old one aside to ``iter_N.old`` and deletes it only once the
new one is in place, so a complete copy of the iteration exists at every moment.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from megatron.core import dist_checkpointing

from .config import EttinConfig, attention_of, model_fields
from .errors import ConfigError
from .files import atomic_write
from .runtime import barrier, is_writer

LATEST = "latest_checkpointed_iteration.txt"
CONFIG_FILE = "ettin_config.json"


def iteration_dir(root: str | os.PathLike, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def latest_iteration(root: str | os.PathLike) -> int | None:
    """The iteration named by ``root``'s latest file, or None when ``root`` holds no checkpoint."""
    marker = Path(root) / LATEST
    if not marker.is_file():
        return None
    text = marker.read_text().strip()
    if not text.isdigit():
        raise ConfigError(f"{marker} does not name an iteration ({text!r}); fix or delete it.")
    return int(text)


def saved_iterations(root: str | os.PathLike) -> list[Path]:
    """The complete iteration directories of a checkpoint root, oldest first: ``iter_N`` with its
    ettin_config.json, which a save writes last, before the rename (never an ``iter_N.tmp`` or a
    re-save's ``iter_N.old``)."""
    found = [d for d in Path(root).glob("iter_*") if iteration_of(d) is not None and (d / CONFIG_FILE).is_file()]
    return sorted(found, key=iteration_of)


def iteration_of(directory: str | os.PathLike) -> int | None:
    """The N of an ``iter_N`` directory (iteration_dir's name); None for any other name (``iter_N.tmp``)."""
    number = Path(directory).name.removeprefix("iter_")
    return int(number) if Path(directory).name.startswith("iter_") and number.isdigit() else None


def training_position(directory: str | os.PathLike) -> dict | None:
    """Where the run stood at a checkpoint: {"iteration", "consumed_samples", "consumed_tokens"} from its
    training state (None for weights only, an import or an average). Reads the small common state, no weights."""
    state = dist_checkpointing.load_common_state_dict(str(directory)).get("training_state")
    if state is None:
        return None
    return {key: state.get(key) for key in ("iteration", "consumed_samples", "consumed_tokens")}


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """Accept either a checkpoint root (use its latest iteration) or an ``iter_N`` directory."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    iteration = latest_iteration(path)
    if iteration is None:
        raise ConfigError(f"{path} is not an ettin-megatron checkpoint (no {LATEST} and no {CONFIG_FILE}).")
    directory = iteration_dir(path, iteration)
    if not directory.is_dir():
        aside = _aside(directory)
        hint = f"rename {aside.name} (its previous copy) back to {directory.name}" if aside.is_dir() else (
            f"fix or delete {LATEST}")
        raise ConfigError(f"{path / LATEST} names iteration {iteration} but {directory} does not exist; {hint}.")
    return directory


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """The ``ettin_config.json`` of a checkpoint (root or iteration directory), checked to describe a
    model (a ``model`` object of config fields, under today's names); one-line ConfigErrors otherwise."""
    config_file = resolve_checkpoint_dir(path) / CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(f"{config_file.parent} has no {CONFIG_FILE}; the checkpoint is incomplete.")
    try:
        description = json.loads(config_file.read_text())
        fields = description["model"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{config_file} is not an ettin-megatron checkpoint description (no 'model' fields).") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{config_file}: 'model' must be an object of config fields.")
    description["model"] = _renamed_fields(fields)
    return description


def _renamed_fields(fields: dict) -> dict:
    """Model fields under today's names. Checkpoints written before the model's kind was named
    ``attention`` store it as ``"objective": "mlm" | "clm"``; they still load, as that attention."""
    if "objective" not in fields:
        return fields
    renamed = dict(fields)
    renamed["attention"] = attention_of(renamed.pop("objective"))
    return renamed


def model_sharded_state_dict(model_chunks) -> dict:
    """Megatron-LM's convention: "model" for one chunk, "model0", "model1", ... for virtual stages."""
    if len(model_chunks) == 1:
        return {"model": model_chunks[0].sharded_state_dict()}
    return {f"model{i}": chunk.sharded_state_dict() for i, chunk in enumerate(model_chunks)}


def _aside(directory: Path) -> Path:
    """Where a re-saved iteration's previous copy waits until the new one is in place."""
    return directory.with_name(directory.name + ".old")


def save_checkpoint(root, iteration: int, model_chunks, config: EttinConfig, extra: dict | None = None,
                    tokenizer: str | None = None, training_objective: str | None = None,
                    provenance: dict | None = None) -> Path:
    """Save model chunks (+ ``extra`` sharded entries) as iteration ``iteration``; collective over all ranks.
    ``training_objective`` is recorded beside the model fields (default: the one a model of this attention
    is pretrained with, clm for a causal model and mlm for a bidirectional one, as for a Hugging Face import).
    ``provenance`` adds entries to ettin_config.json that say where weights not trained as such come from
    (an average names its sources and their weights)."""
    final = iteration_dir(root, iteration)
    staging, aside = final.with_name(final.name + ".tmp"), _aside(final)
    marker = Path(root) / LATEST
    if is_writer():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    try:
        state = {**model_sharded_state_dict(model_chunks), **(extra or {})}
        dist_checkpointing.save(state, str(staging))
        if is_writer():
            description = {"model": model_fields(config), "tokenizer": tokenizer, "iteration": iteration,
                           "training_objective": training_objective or ("clm" if config.causal else "mlm"),
                           **(provenance or {})}
            (staging / CONFIG_FILE).write_text(json.dumps(description, indent=2) + "\n")
            if final.exists():  # else an existing aside may be the only copy left by a killed re-save
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(final, aside)
            os.replace(staging, final)
            with atomic_write(marker) as file:
                file.write(f"{iteration}\n")
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        if is_writer():
            new_in_place = final.exists() and not staging.exists()
            shutil.rmtree(staging, ignore_errors=True)
            if aside.is_dir() and new_in_place:
                shutil.rmtree(aside)
            elif aside.is_dir() and not final.exists():
                os.replace(aside, final)
        raise
    barrier()
    return final


def load_checkpoint(path, model_chunks, extra: dict | None = None, strict: bool = True) -> dict:
    """Load model weights (and the ``extra`` sharded entries asked for) into the given chunks.

    ``path`` is a root (its latest iteration) or an ``iter_N`` directory. Returns the loaded state dict
    (its "model" entries already applied) so that callers can restore what they added to ``extra``.
    """
    directory = resolve_checkpoint_dir(path)
    state = {**model_sharded_state_dict(model_chunks), **(extra or {})}
    loaded = dist_checkpointing.load(state, str(directory))
    if len(model_chunks) == 1:
        model_chunks[0].load_state_dict(loaded["model"], strict=strict)
    else:
        for i, chunk in enumerate(model_chunks):
            chunk.load_state_dict(loaded[f"model{i}"], strict=strict)
    return loaded
