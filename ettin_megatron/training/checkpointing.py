"""Training state in checkpoints, on top of ``ettin_megatron.checkpoint`` (one on-disk layout).

A training checkpoint is the model checkpoint plus these entries of ``extra``:

    optimizer            megatron's optimizer.sharded_state_dict (reshardable: any TP / PP / DP)
    opt_param_scheduler  the LR scheduler's state (a plain object)
    training_state       {"iteration", "consumed_samples", "consumed_tokens", "layout": [TP, PP, DP],
                         "optimizer": optimizer.optimizer_record, "run": run_record} (plain object; the
                         data position, the input tokens read up to it, the update rule the moments
                         belong to, and what else a resumed run must keep)
    rng_state            per-rank RNG states (python, numpy, torch, the TP tracker), one ShardedObject
                         per (PP, TP, DP) rank; restored only at the same layout, where it makes a
                         resumed run bit-exact. At another layout the run resumes without it.

``--finetune`` loads the weights only: a fresh optimizer, schedule and data position.

``check_load`` reads what --load points at before any process group or model exists, so that a
checkpoint that cannot serve this run stops it in one line rather than deep inside dist_checkpointing
or after a wasted start.
"""

from __future__ import annotations

import random
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from ..checkpoint import (
    CONFIG_FILE,
    LATEST,
    load_checkpoint,
    model_sharded_state_dict,
    read_checkpoint_config,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from ..config import SizePreset
from ..errors import ConfigError, one_line
from .arguments import UNITS, Arguments
from .optimizer import (
    create_state,
    fused_adam_available,
    load_schedule,
    optimizer_record,
    planned_schedule,
    schedule_state,
)
from .plan import RunPlan
from .setup import unwrap

SHAPE_FIELDS = (*(f.name for f in fields(SizePreset)), "vocab_size")
"""The model fields that shape the weights, which a loaded checkpoint must share with the run. The
others may change on purpose: a new phase raises the RoPE bases and the position limit, and
cross-objective training loads the weights of the other attention (encoder <-> decoder)."""


OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "fully_reshardable"}
"""How the distributed optimizer lays out its state in a checkpoint: per parameter, in the shapes of the
model (Megatron-LM's --dist-ckpt-optim-fully-reshardable), so that it loads at any TP, PP and DP and
without the distributed optimizer. Megatron-core 0.16's default layout no longer saves at all."""


def _layout() -> list[int]:
    return [parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_data_parallel_world_size()]


def _rng_sharded_object(state) -> ShardedObject:
    tp, pp, dp = _layout()
    rank = (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank(),
            parallel_state.get_data_parallel_rank())
    return ShardedObject("rng_state", state, (pp, tp, dp), rank, replica_id=0)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def run_record(plan: RunPlan) -> dict:
    """What a resumed run must share with its checkpoint besides the weights' shapes and the optimizer:
    with another training objective, tokenizer or data layout it would be another run that merely
    continues the step count. Such a change starts from the weights, with --finetune."""
    return {"objective": plan.args.model.objective, "tokenizer": str(plan.tokenizer),
            "data_layout": plan.args.data.data_layout}


def save(root, iteration: int, consumed_samples: int, consumed_tokens: int, model_chunks, optimizer, scheduler,
         config, plan: RunPlan):
    """Save model + optimizer + scheduler + RNG + data position as iteration ``iteration`` (collective),
    with the run's optimizer_record and run_record."""
    chunks = unwrap(model_chunks)
    args = plan.args
    extra = {
        "optimizer": optimizer.sharded_state_dict(model_sharded_state_dict(chunks), metadata=OPTIMIZER_FORMAT),
        "opt_param_scheduler": schedule_state(scheduler),
        "training_state": {"iteration": iteration, "consumed_samples": consumed_samples,
                           "consumed_tokens": consumed_tokens, "layout": _layout(),
                           "optimizer": optimizer_record(args), "run": run_record(plan)},
        "rng_state": _rng_sharded_object(rng_state()),
    }
    return save_checkpoint(root, iteration, chunks, config, extra=extra, tokenizer=args.data.tokenizer_model,
                           training_objective=args.model.objective)


def has_checkpoint(path) -> bool:
    """Whether ``path`` holds a checkpoint: an iteration directory, or a root with a latest marker.

    Only a root with no marker is a fresh start (--load and --save may name the same directory before
    its first save). A marker that is unreadable or names a missing iteration raises ConfigError:
    taking it for "no checkpoint" would restart from scratch and later overwrite the run.
    """
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() and not (path / LATEST).is_file():
        return False
    resolve_checkpoint_dir(path)
    return True


class RunFinished(Exception):
    """--load is this very run (--save names the same place), already at its end: nothing to do. A job
    that requeues itself until done stops here with success, as Megatron-LM's loop does."""


def check_load(plan: RunPlan, model: dict) -> Path | None:
    """The checkpoint directory --load continues from, or None for a fresh start; ``model`` is the run's
    config.model_fields. Reads only small files, so it runs before any process group or model exists.

    Raises ConfigError for a --finetune without a checkpoint, a checkpoint whose weights have other
    shapes or whose files are damaged, and, unless --finetune, for one without training state or
    already at or past this run's end (resuming it would train no step): RunFinished instead when
    --save is --load, the relaunch of a finished run.
    """
    args = plan.args
    _check_save(args)
    if not args.run.load or not has_checkpoint(args.run.load):
        if args.run.load and args.run.finetune:
            raise ConfigError(f"--load {args.run.load} holds no checkpoint to fine-tune from; fix --load.")
        if args.run.load and not _same_root(args.run.load, args.run.save):  # a typo would start from scratch
            raise ConfigError(f"--load {args.run.load} holds no checkpoint; fix --load, or leave it out (or make "
                              "it --save) to start from scratch.")
        return None
    directory = resolve_checkpoint_dir(args.run.load)
    description = read_checkpoint_config(directory)
    saved = description["model"]
    differing = [f"{name} {saved.get(name)} vs {model[name]}" for name in SHAPE_FIELDS
                 if saved.get(name) != model[name]]
    if differing:
        raise ConfigError(f"checkpoint {directory} is another model shape ({', '.join(differing)}: checkpoint "
                          "vs this run); change --model-size / --vocab-size or --load.")
    if args.run.finetune:
        return directory
    try:
        common = dist_checkpointing.load_common_state_dict(str(directory))
    except Exception as exc:  # dist_checkpointing and torch.load raise many types
        raise ConfigError(f"{directory} is incomplete or damaged ({one_line(exc)}); load an earlier "
                          "iteration.") from None
    state = common.get("training_state")
    if state is None:
        raise ConfigError(f"{directory} holds weights only (no training state); load it with --finetune.")
    iteration, consumed, tokens = state["iteration"], state["consumed_samples"], state.get("consumed_tokens")
    if tokens is None and args.run.train_tokens is not None:
        raise ConfigError(f"{directory} predates token counting (no consumed tokens): resume it with "
                          "--train-samples or --train-iters, or load it with --finetune.")
    if plan.reached_end(iteration, consumed, tokens or 0):
        where = f"iteration {iteration} / {consumed} samples / {tokens or 0} tokens"
        if _same_root(args.run.save, args.run.load):
            raise RunFinished(f"{directory} is at {where}: this run is already complete, nothing to do.")
        length = next(f"--train-{unit}" for unit in UNITS if getattr(args.run, f"train_{unit}") is not None)
        raise ConfigError(f"checkpoint {directory} is at {where}, already at or past this run's end; to start "
                          f"the next phase from it pass --finetune (weights only) or raise {length}.")
    recorded = {"objective": description["training_objective"]} if "training_objective" in description else {}
    _check_run(directory, {**saved, **recorded, **state.get("run", {})}, {**model, **run_record(plan)})
    _check_optimizer(args, directory, state.get("optimizer", LEGACY_OPTIMIZER))
    _check_schedule(plan, directory, common["opt_param_scheduler"])
    return directory


def _same_root(a, b) -> bool:
    return bool(a and b) and Path(a).resolve() == Path(b).resolve()


def _check_save(args: Arguments) -> None:
    """A --save that already holds a run is continued only through --load: training it afresh would move
    its latest marker back and orphan the later iterations."""
    if args.run.save and not _same_root(args.run.save, args.run.load) and has_checkpoint(args.run.save):
        held = resolve_checkpoint_dir(args.run.save).name
        raise ConfigError(f"--save {args.run.save} already holds a run ({held}); pass --load {args.run.save} to "
                          "resume it, or choose another --save.")


def _differences(saved: dict, planned: dict, label=lambda name: name) -> str:
    """Each planned entry the checkpoint recorded otherwise, as "LABEL saved vs planned", comma-joined
    ("" if none); an entry the checkpoint predates is not compared."""
    return ", ".join(f"{label(name)} {saved[name]} vs {planned[name]}" for name in planned
                     if name in saved and saved[name] != planned[name])


def _check_run(directory: Path, saved: dict, planned: dict) -> None:
    """Refuse to resume a checkpoint under another model (any model field: a new phase's RoPE bases
    included) or run_record."""
    differing = _differences(saved, planned, lambda name: _FLAGS.get(name, name))
    if differing:
        raise ConfigError(f"checkpoint {directory} is another run ({differing}: checkpoint vs this run); "
                          "resume it as it was, or start from its weights with --finetune (a new phase, or the "
                          "other objective).")


_FLAGS = {"objective": "--objective", "data_layout": "--data-layout", "tokenizer": "tokenizer"}
"""How _check_run names what differs: the flag, where one sets it alone."""


LEGACY_OPTIMIZER = {"optimizer": "adam", "fully_decoupled_weight_decay": False}
"""The optimizer of a checkpoint that predates the record: the only one there was."""


def _check_optimizer(args: Arguments, directory: Path, saved: dict) -> None:
    """Refuse to resume moments under another update rule, or the state of the distributed optimizer
    without it (or the reverse): megatron lays the two out differently."""
    planned = optimizer_record(args)
    differing = _differences(saved, planned, lambda name: f"--{name.replace('_', '-')}")
    if differing:
        raise ConfigError(f"checkpoint {directory} was trained with other optimizer settings ({differing}: "
                          "checkpoint vs this run); resume with the checkpoint's, or start from its weights with "
                          "--finetune.")
    if planned["use_distributed_optimizer"] and planned["optimizer"] == "adam" and not fused_adam_available():
        raise ConfigError("megatron-core cannot load torch AdamW's state into the distributed optimizer (it "
                          "loads that of Transformer Engine's or apex's FusedAdam); install one, or resume "
                          "without --use-distributed-optimizer.")


def _check_schedule(plan: RunPlan, directory: Path, saved: dict) -> None:
    """Refuse to resume under an LR schedule other than the checkpoint's (a longer --train-iters moves
    the decay) unless a flag says which one wins, as Megatron-LM's scheduler does."""
    run = plan.args.run
    if run.override_opt_param_scheduler or run.use_checkpoint_opt_param_scheduler:
        return
    planned = planned_schedule(plan.args, plan.schedule)
    planned.pop("num_steps", None)  # where the schedule stands, not what it is
    differing = _differences(saved, planned)
    if differing:
        raise ConfigError(f"checkpoint {directory} has another LR schedule ({differing}: checkpoint "
                          "vs this run, lengths in the run's unit); pass --use-checkpoint-opt_param-scheduler to keep "
                          "the checkpoint's or --override-opt_param-scheduler to use this run's.")


def load(directory, model_chunks, optimizer, scheduler, finetune: bool = False) -> tuple[int, int, int]:
    """Restore the checkpoint ``check_load`` accepted; returns (iteration, consumed_samples,
    consumed_tokens) to continue from ((0, 0, 0) with finetune; tokens 0 for a checkpoint older than
    token counting, which check_load allows only where tokens are just reported)."""
    chunks = unwrap(model_chunks)
    if finetune:
        load_checkpoint(directory, chunks)
        return 0, 0, 0
    common = dist_checkpointing.load_common_state_dict(str(directory))
    same_layout = common["training_state"]["layout"] == _layout()
    create_state(optimizer)
    extra = {"optimizer": optimizer.sharded_state_dict(model_sharded_state_dict(chunks), is_loading=True,
                                                       metadata=OPTIMIZER_FORMAT)}
    if same_layout:
        extra["rng_state"] = _rng_sharded_object(rng_state())
    loaded = load_checkpoint(directory, chunks, extra=extra)
    optimizer.load_state_dict(loaded["optimizer"])
    load_schedule(scheduler, common["opt_param_scheduler"])
    if same_layout:
        set_rng_state(loaded["rng_state"])
    state = common["training_state"]
    return state["iteration"], state["consumed_samples"], state.get("consumed_tokens", 0)


__all__ = ["RunFinished", "check_load", "has_checkpoint", "load", "save"]
