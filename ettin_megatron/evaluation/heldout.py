"""Held-out loss of a checkpoint, computed exactly as pretrain's validation computes it.

"The same data" is said in pretrain's own flags, with pretrain's defaults (HELDOUT_FLAGS): the held-out
set is the first ``--eval-iters x --global-batch-size`` samples of the validation split of
``--data-path`` / ``--data-mix`` under ``--split``, cut at ``--seq-length`` in ``--data-layout`` with
``--seed``. Passing a run's data flags therefore scores the very samples its validation logged; a
held-out prefix is scored whole with ``--split 0,1,0``. Nothing here re-implements that set: the
dataset is pretrain's (training/batching.dataset_config on megatron's builder), so are its fixed
masks (MLM / MNTP at the 15% evaluation rate, each sample's drawn from (seed, split, sample index),
whatever the checkpoint), CLM's next-token labels, the micro-batches (training/data_loader.py), the
forward step and the loss (training/forward_step.py in evaluation mode) and its reduction, the sum over
every labelled token divided by their number (training/loop.validation_report). Each checkpoint is
loaded alone at TP = PP = 1 in float32 (convert/megatron_side.py), so memory holds one model at a time.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..checkpoint import CONFIG_FILE
from ..config import attention_of
from ..convert.hf_files import resolve_tokenizer
from ..convert.megatron_side import load_megatron_model
from ..data.datasets import build_datasets
from ..data.tokenizer import tokenizer_fingerprint
from ..errors import ConfigError
from ..runtime import device
from ..training.arguments import Arguments, make_arguments
from ..training.batching import dataset_config
from ..training.data_loader import MicroBatchSampler, micro_batch_loader
from ..training.forward_step import make_forward_step
from ..training.loop import validation_report
from ..training.plan import DataPlan, plan_data
from .trajectory import Checkpoint

HELDOUT_FLAGS = ("data_path", "data_mix", "split", "data_layout", "min_chunk_size", "always_skip_size",
                 "data_cache_path", "tokenizer_model", "seq_length", "micro_batch_size", "global_batch_size",
                 "eval_iters", "seed", "objective", "num_workers")
"""Pretrain's flags that say which samples, masks and labels the held-out set holds, and how it is read."""


@dataclass(frozen=True)
class HeldOut:
    """The checked held-out set: pretrain's arguments that define it, its data plan and its dataset."""

    args: Arguments
    data: DataPlan
    dataset: torch.utils.data.Dataset

    @property
    def samples(self) -> int:
        return self.args.run.eval_iters * self.args.data.global_batch_size

    def describe(self) -> str:
        """Which samples, in a line: "16 samples of the valid split of docs (--split 90,10,0, --seed 21)"."""
        d = self.args.data
        names = ", ".join(Path(prefix).name for prefix in self.data.blend[0])
        return (f"{self.samples:,} samples of the valid split of {names} (--split {d.split}, --seq-length "
                f"{d.seq_length}, --seed {self.args.run.seed})")


@dataclass(frozen=True)
class Score:
    """A checkpoint's held-out loss (mean over the labelled tokens), its argmax accuracy on them, how many
    there were, and a digest of the inputs and labels it was scored on (equal digests: equal masks)."""

    loss: float
    accuracy: float
    labelled: int
    digest: str

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))  # exp overflows past ~709


def heldout_set(given: dict, checkpoints: list[Checkpoint]) -> HeldOut:
    """The held-out set of the given HELDOUT_FLAGS values (the others at pretrain's defaults; the objective
    and tokenizer at the checkpoints' own), checked before any model is loaded: one-line ConfigErrors for
    checkpoints of different vocabularies or objectives, a tokenizer other than theirs, data made with
    another tokenizer, a prefix or split without validation documents."""
    first = checkpoints[0].description
    for checkpoint in checkpoints[1:]:
        for key in ("vocab_size", "max_position_embeddings"):
            if checkpoint.description["model"].get(key) != first["model"].get(key):
                raise ConfigError(f"{checkpoint.name} has another {key} than {checkpoints[0].name}; score "
                                  "checkpoints of one model per call.")
        if "objective" not in given and checkpoint.description.get("training_objective") != first.get("training_objective"):
            raise ConfigError(f"{checkpoint.name} was trained with another objective than {checkpoints[0].name}; "
                              "pass --objective to score them all with one.")
    attention = first["model"]["attention"]
    objective = given.get("objective") or first.get("training_objective") or ("clm" if attention == "causal" else "mlm")
    if attention_of(objective) != attention:
        raise ConfigError(f"{checkpoints[0].name} is a {attention} model, which --objective {objective} does not "
                          f"train; score it with its own objective ({first.get('training_objective')}).")
    if given.get("tokenizer_model"):
        _check_tokenizer(given["tokenizer_model"], checkpoints[0])
    else:
        given = {**given, "tokenizer_model": _recorded_tokenizer(checkpoints[0])}
    values = {**given, "objective": objective, "vocab_size": first["model"]["vocab_size"],
              "max_position_embeddings": first["model"]["max_position_embeddings"]}
    args = make_arguments(**values)
    d = args.data
    if not args.run.eval_iters:
        raise ConfigError("--eval-iters 0 leaves nothing to score; pass the number of validation batches.")
    if d.global_batch_size % d.micro_batch_size:
        raise ConfigError(f"--global-batch-size {d.global_batch_size} is not divisible by --micro-batch-size "
                          f"{d.micro_batch_size}; change one of them.")
    data = plan_data(args, training=False)
    _, valid, _ = build_datasets(dataset_config(args, data.blend, data.token_ids),
                                 [0, args.run.eval_iters * d.global_batch_size, 0])
    return HeldOut(args, data, valid)


def _recorded_tokenizer(checkpoint: Checkpoint) -> str | None:
    """The tokenizer the checkpoint was trained with, found as the export finds it (also relative to the
    checkpoint); None for a run without --tokenizer-model (ModernBERT's, as pretrain assumes)."""
    recorded = checkpoint.description.get("tokenizer")
    if not recorded:
        return None
    try:
        return str(resolve_tokenizer(recorded, relative_to=checkpoint.directory))
    except ConfigError:
        raise ConfigError(f"{checkpoint.name} was trained with the tokenizer {recorded}, which is not there; pass "
                          "--tokenizer-model (the tokenizer the data was made with).") from None


def _check_tokenizer(given: str, checkpoint: Checkpoint) -> None:
    """Refuse a --tokenizer-model other than the one the checkpoint was trained with (when that one can
    still be found to compare; a missing --tokenizer-model is plan_data's to report)."""
    recorded = checkpoint.description.get("tokenizer")
    if not recorded or not Path(given).exists():
        return
    try:
        recorded = resolve_tokenizer(recorded, relative_to=checkpoint.directory)
    except ConfigError:
        return
    if tokenizer_fingerprint(str(recorded)) != tokenizer_fingerprint(given):
        raise ConfigError(f"--tokenizer-model {given} is not the tokenizer {checkpoint.name} was trained with "
                          f"({recorded}, in its {CONFIG_FILE}); leave the flag out to use that one.")


def score(checkpoint: Checkpoint, heldout: HeldOut) -> Score:
    """The held-out Score of ``checkpoint``, loaded alone in float32 on this machine's device."""
    model, _ = load_megatron_model(checkpoint.directory, dtype=torch.float32)
    return score_model(model.to(device()), heldout)


def score_model(model: torch.nn.Module, heldout: HeldOut) -> Score:
    """The held-out Score of a TP = PP = 1 model: pretrain's validation pass (module doc), in one process."""
    args = heldout.args
    d = args.data
    num_micro = d.global_batch_size // d.micro_batch_size
    sampler = MicroBatchSampler(len(heldout.dataset), 0, d.micro_batch_size, 0, 1, args.run.eval_iters * num_micro)
    loader = micro_batch_loader(heldout.dataset, sampler, d.num_workers, 1, heldout.data.pad_token_id)
    digest = hashlib.sha256()
    forward = make_forward_step(device(), model.config, evaluation=True)
    report = validation_report([model], forward, _hashed(loader, digest), args.run.eval_iters, num_micro,
                               d.seq_length)
    labelled = max(report.labelled, 1)
    return Score(report.loss_sum / labelled, report.correct / labelled, int(report.labelled), digest.hexdigest()[:16])


def _hashed(batches, digest) -> Iterator[dict]:
    """``batches`` as they are, each one's inputs, labels and loss mask fed to ``digest`` on the way."""
    for batch in batches:
        for key in ("tokens", "labels", "loss_mask"):
            digest.update(batch[key].numpy().tobytes())
        yield batch
