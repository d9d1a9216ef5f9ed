"""The plan of a run: what its arguments mean, checked and resolved once, before any compute.

``plan_run(args, world_size)`` checks everything a user can get wrong against the world, the tokenizer
and the data (one-line ConfigError) and resolves what the run then needs: the model's shape, pipeline
chunks and vocabulary (``ModelPlan``), the special token ids, the parsed blend or mixture, each dataset's
record, the LR schedule's lengths. It loads the tokenizer once and opens each dataset once. The
result is frozen: setup, the loop and checkpointing read it, and never work these out again.
``plan_model`` is the model part alone, for tools that build a model without data.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)
from megatron.core.datasets.utils import get_blend_from_list

from ..cli import check_writable
from ..config import PRESETS, SizePreset
from ..data.chunking import ChunkRules
from ..data.dataset_info import DatasetInfo, TokenizerStamp, check_dataset
from ..data.datasets import EttinDataset, require_documents
from ..data.index_file import dataset_prefix, open_dataset
from ..data.mixtures import mixture_blend
from ..data.tokenizer import dataset_token_ids, load_tokenizer, special_ids, tokenizer_fingerprint
from ..errors import ConfigError
from ..model.layer_specs import resolve_spec
from ..runtime import report
from ..vocab import MODERNBERT_IDS
from .arguments import SCHEDULE_LENGTHS, UNITS, Arguments, DataArgs


@dataclass(frozen=True)
class ModelPlan:
    """The model a run trains: its arguments, the shape after --num-layers and the other shape flags, the
    layers' split into virtual pipeline chunks, the padded vocabulary."""

    args: Arguments
    shape: SizePreset
    virtual_pipeline_size: int | None
    vocab_size: int


@dataclass(frozen=True)
class ScheduleSteps:
    """The LR schedule's lengths in the run's unit: samples (Megatron-LM's), or input tokens in a
    --train-tokens run."""

    warmup: int
    decay: int
    wsd_decay: int


@dataclass(frozen=True)
class RunPlan:
    """A checked run (module doc)."""

    args: Arguments
    model: ModelPlan
    data_parallel_size: int
    token_ids: dict
    """EttinDatasetConfig's token-id fields of the run's tokenizer ({}: ModernBERT's, its defaults)."""
    tokenizer: TokenizerStamp | None
    """What the data must have been made with: the tokenizer's fingerprint and size."""
    blend: tuple[list[str], list[float] | None]
    """(dataset prefixes, weights or None) of --data-path or --data-mix."""
    records: dict[str, DatasetInfo | None]
    """Each prefix's record (its .meta.json; None for data from Megatron-LM's tool)."""
    schedule: ScheduleSteps

    @property
    def pad_token_id(self) -> int:
        return self.token_ids.get("pad_token_id", MODERNBERT_IDS.pad)

    def reached_end(self, iteration: int, consumed_samples: int, consumed_tokens: int) -> bool:
        """Whether a run that has trained ``iteration`` steps on ``consumed_samples`` samples of
        ``consumed_tokens`` input tokens is done (a budget ends at the first step that reaches it)."""
        r = self.args.run
        if r.train_iters is not None:
            return iteration >= r.train_iters
        if r.train_tokens is not None:
            return consumed_tokens >= r.train_tokens
        return consumed_samples >= r.train_samples


def plan_run(args: Arguments, world_size: int) -> RunPlan:
    """Check the run before any compute and resolve what it needs (module doc); raises a one-line
    ConfigError. Reads the tokenizer once and each dataset's index and record once."""
    p, d, r, o = args.parallel, args.data, args.run, args.optim
    if world_size < 1:  # the launchers' --validate-only pass computes it from their variables
        raise ConfigError(f"{world_size} processes (--nproc-per-node x --nnodes): both must be positive.")
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size
    if world_size % model_parallel:
        raise ConfigError(f"{world_size} processes (--nproc-per-node x --nnodes) are not divisible by "
                          f"--tensor-model-parallel-size x --pipeline-model-parallel-size = {model_parallel}; "
                          "change the process count or the parallel sizes.")
    dp = world_size // model_parallel
    if d.global_batch_size % (d.micro_batch_size * dp):
        raise ConfigError(f"global batch size {d.global_batch_size} is not divisible by micro batch size "
                          f"{d.micro_batch_size} x data parallel size {dp}; change one of them.")
    _check_units(args)
    for name in ("rampup_batch_size", "rampup_batch_size_tokens"):
        if getattr(d, name) is not None:
            _fit_rampup(d, dp, name)
    if o.lr_warmup_fraction is not None and (o.lr_warmup_iters or o.lr_warmup_samples or o.lr_warmup_tokens):
        raise ConfigError("pass --lr-warmup-fraction or --lr-warmup-iters / -samples / -tokens, not both.")
    data = plan_data(args, training=True)
    model = plan_model(args, data.vocab_size)
    if p.virtual_pipeline_model_parallel_size and p.num_layers_per_virtual_pipeline_stage:
        raise ConfigError("pass either --virtual-pipeline-model-parallel-size or "
                          "--num-layers-per-virtual-pipeline-stage, not both.")
    if p.virtual_pipeline_model_parallel_size and p.pipeline_model_parallel_size < 2:
        raise ConfigError("virtual pipeline stages need --pipeline-model-parallel-size >= 2.")
    if r.finetune and not r.load:
        raise ConfigError("--finetune needs --load (the checkpoint whose weights to start from).")
    if o.lr_decay_style == "WSD" and o.min_lr > o.lr:
        raise ConfigError(f"--min-lr {o.min_lr} is above --lr {o.lr}.")
    if r.fp16:
        raise ConfigError("--fp16 is not supported: Ettin trains in BF16 mixed precision; pass --bf16 "
                          "(or nothing, for FP32).")
    if r.override_opt_param_scheduler and r.use_checkpoint_opt_param_scheduler:
        raise ConfigError("pass --override-opt_param-scheduler or --use-checkpoint-opt_param-scheduler, "
                          "not both.")
    if r.fp8_format and not r.bf16:
        raise ConfigError("--fp8-format needs --bf16 (FP8 GEMMs run inside BF16 mixed precision).")
    if resolve_spec(args.model.spec) != "te" and r.fp8_format:  # the local linears would ignore FP8
        raise ConfigError(f"--fp8-format {r.fp8_format} needs Transformer Engine's layers: "
                          + ("drop --spec local or --fp8-format." if args.model.spec == "local" else
                             "install ettin-megatron[gpu] (transformer-engine) or drop --fp8-format "
                             "(PRECISION=bf16)."))
    _check_recompute(args, model)
    if r.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--wandb-project needs the wandb package: pip install 'ettin-megatron[wandb]'.")
    _check_output_directories(args)
    return RunPlan(args=args, model=model, data_parallel_size=dp, token_ids=data.token_ids,
                   tokenizer=data.tokenizer, blend=data.blend, records=data.records, schedule=schedule_steps(args))


@dataclass(frozen=True)
class DataPlan:
    """The data a run (or an evaluation, which reads only the validation split) reads, checked against
    its tokenizer and model vocabulary: what RunPlan holds of it, and the vocabulary size."""

    vocab_size: int
    token_ids: dict
    tokenizer: TokenizerStamp
    blend: tuple[list[str], list[float] | None]
    records: dict[str, DatasetInfo | None]

    @property
    def pad_token_id(self) -> int:
        return self.token_ids.get("pad_token_id", MODERNBERT_IDS.pad)


def plan_data(args: Arguments, training: bool) -> DataPlan:
    """Check the tokenizer, the blend and each prefix (its files, documents, record and token ids, the
    documents --split leaves it) and the sample length, in one-line ConfigErrors. A run (``training``)
    needs training documents in every prefix; an evaluation needs validation documents instead, and
    may hold none for training (a held-out prefix scored whole, --split 0,1,0)."""
    d = args.data
    if not d.data_path and not d.data_mix:
        raise ConfigError(f"no {'training' if training else 'held-out'} data: pass --data-path PREFIX (from "
                          "tools/preprocess_data.py) or --data-mix MIXTURE.yaml.")
    if d.data_path and d.data_mix:
        raise ConfigError("pass either --data-path or --data-mix, not both.")
    if d.data_mix and not Path(d.data_mix).is_file():
        raise ConfigError(f"--data-mix {d.data_mix} does not exist.")
    if d.tokenizer_model and not Path(d.tokenizer_model).exists():
        raise ConfigError(f"--tokenizer-model {d.tokenizer_model} does not exist.")
    vocabulary = _vocabulary(args)
    blend = _blend(args)
    split = _split_bounds(d.split)
    records = {}
    for prefix in blend[0]:
        if not all(Path(prefix + ext).is_file() for ext in (".bin", ".idx")):
            raise ConfigError(f"no dataset at {prefix} (.bin/.idx); run tools/preprocess_data.py or fix "
                              "--data-path.")
        dataset = open_dataset(prefix)
        require_documents(dataset, prefix)
        records[prefix] = check_dataset(prefix, dataset, vocabulary.vocab_size, vocabulary.stamp, vocabulary.flag)
        _check_split_documents(args, split, prefix, EttinDataset.numel_low_level_dataset(dataset), training)
    if d.seq_length > args.model.max_position_embeddings:
        raise ConfigError(f"--seq-length {d.seq_length} exceeds the model's position limit "
                          f"{args.model.max_position_embeddings}; shorten it or raise "
                          "--max-position-embeddings.")
    if d.data_layout != "concat":
        ChunkRules.for_sequence(d.seq_length, d.min_chunk_size, d.always_skip_size)
    return DataPlan(vocabulary.vocab_size, vocabulary.token_ids, vocabulary.stamp, blend, records)


SPECIAL_TOKEN_FIELDS = {"cls_token_id": "[CLS]", "sep_token_id": "[SEP]", "pad_token_id": "[PAD]",
                        "mask_token_id": "[MASK]"}


@dataclass(frozen=True)
class _Vocabulary:
    vocab_size: int
    token_ids: dict
    stamp: TokenizerStamp
    flag: str
    """How messages name the tokenizer."""


def _vocabulary(args: Arguments) -> _Vocabulary:
    """The model's vocabulary size, checked to hold every id the run feeds the embedding (the
    tokenizer's, or without one ModernBERT's special ids), the token-id fields of the datasets, and the
    tokenizer the data must have been made with. The one place a training run loads its tokenizer."""
    d, m = args.data, args.model
    if d.tokenizer_model:
        tokenizer = load_tokenizer(d.tokenizer_model)
        ids, token_ids = special_ids(tokenizer), dataset_token_ids(tokenizer)
        stamp = TokenizerStamp(tokenizer_fingerprint(d.tokenizer_model), ids.vocab_size)
        flag = f"--tokenizer-model {d.tokenizer_model}"
    else:
        ids, token_ids, flag = MODERNBERT_IDS, {}, "ModernBERT's tokenizer (used without --tokenizer-model)"
        stamp = TokenizerStamp(None, ids.vocab_size)
    vocab_size = m.vocab_size or ids.padded_vocab_size
    if d.tokenizer_model and ids.vocab_size > vocab_size:
        raise ConfigError(f"--vocab-size {vocab_size} is smaller than {flag}'s {ids.vocab_size} tokens; raise "
                          "it or leave it out (the default is the tokenizer's, padded to a multiple of 64).")
    fields = ids.token_id_fields()
    top = max(SPECIAL_TOKEN_FIELDS, key=fields.get)
    if fields[top] >= vocab_size:
        raise ConfigError(f"--vocab-size {vocab_size} does not hold the special token ids: "
                          f"{SPECIAL_TOKEN_FIELDS[top]} is {fields[top]} in {flag}; pass --tokenizer-model "
                          f"(the tokenizer the data was made with) or a --vocab-size above {fields[top]}.")
    return _Vocabulary(vocab_size, token_ids, stamp, flag)


def _blend(args: Arguments) -> tuple[list[str], list[float] | None]:
    """(prefixes, weights or None) of --data-mix (its files checked to exist) or --data-path, whose
    weights must be positive, as a mixture's are (megatron would fail on them with a bare assert)."""
    if args.data.data_mix:
        weights, prefixes = mixture_blend(args.data.data_mix, check_exists=True)
        return prefixes, weights
    try:
        prefixes, weights = get_blend_from_list(args.data.data_path)
    except AssertionError:  # megatron's, when some weights are numbers and others are not
        raise ConfigError("--data-path takes prefixes, or weight-prefix pairs 'W1 P1 W2 P2 ...': check that "
                          "each weight is a number and comes before its prefix.") from None
    for weight, prefix in zip(weights or (), prefixes):
        if not 0 < weight < math.inf:
            raise ConfigError(f"--data-path weight {weight:g} of {prefix} must be a positive number (its share "
                              "of the samples): change it, or drop the pair to leave that dataset out.")
    return [dataset_prefix(prefix) for prefix in prefixes], weights


SPLIT = re.compile(r"\s*(\d+\.?\d*|\.\d+)(\s*,\s*(\d+\.?\d*|\.\d+)){0,2}\s*")
"""A --split that megatron's parser reads as it is written: up to three numbers >= 0, comma-separated (it
takes "-1" for 1)."""


def _split_bounds(split: str) -> list[tuple[float, float] | None]:
    """Megatron's split matrix of --split: train's, valid's and test's (begin, end) share of a dataset's
    documents, None for a split without any. Megatron would assert on more than three numbers and
    divide by a zero sum."""
    numbers = [float(n) for n in split.split(",")] if SPLIT.fullmatch(split) else []
    if not sum(numbers) > 0:
        raise ConfigError(f"--split {split} must be up to three numbers, the train,valid,test shares of the "
                          "documents (e.g. 969,30,1), with a positive sum.")
    return convert_split_vector_to_split_matrix(parse_and_normalize_split(split))


def _check_split_documents(args: Arguments, split: list, prefix: str, documents: int, training: bool) -> None:
    """Refuse a split the run reads that gets none of ``prefix``'s ``documents`` (megatron's rule: a split
    takes its share of the documents, rounded), which megatron's builder would find only after torchrun
    had started every process. A small corpus's validation split is the usual case. An evaluation
    (not ``training``) reads the validation split alone, and always."""

    def count(bounds: tuple[float, float] | None) -> int:
        return 0 if bounds is None else round(bounds[1] * documents) - round(bounds[0] * documents)

    train, valid, _ = split
    where = f"--split {args.data.split} leaves none of the {documents} documents of {prefix}"
    if training and not count(train):
        raise ConfigError(f"{where} for training: raise its first number, or use more data.")
    if not training and not count(valid):
        raise ConfigError(f"{where} for validation: raise its second number (0,1,0 scores the whole prefix).")
    if args.run.eval_iters and valid is not None and not count(valid):
        raise ConfigError(f"{where} for validation: pass --eval-iters 0 (no validation), a --split without "
                          "validation (e.g. 100,0,0), or more data.")


def plan_model(args: Arguments, vocab_size: int | None = None) -> ModelPlan:
    """The ModelPlan of ``args`` (--vocab-size, else ``vocab_size``, else ModernBERT's)."""
    shape = model_shape(args)
    return ModelPlan(args, shape, virtual_pipeline_size(args, shape.num_layers),
                     args.model.vocab_size or vocab_size or MODERNBERT_IDS.padded_vocab_size)


def model_shape(args: Arguments) -> SizePreset:
    """The --model-size preset with the shape flags (--num-layers, --hidden-size, ...) given applied."""
    preset = PRESETS[args.model.model_size]
    return replace(preset, **{name: getattr(args.model, name) for name in vars(preset)
                              if getattr(args.model, name) is not None})


def virtual_pipeline_size(args: Arguments, num_layers: int) -> int | None:
    """VPP from either flag (Megatron-LM accepts both)."""
    p = args.parallel
    if p.num_layers_per_virtual_pipeline_stage:
        per_rank = num_layers // p.pipeline_model_parallel_size
        if per_rank % p.num_layers_per_virtual_pipeline_stage:
            raise ConfigError(f"{per_rank} layers per pipeline rank are not divisible by "
                              f"--num-layers-per-virtual-pipeline-stage {p.num_layers_per_virtual_pipeline_stage}.")
        vpp = per_rank // p.num_layers_per_virtual_pipeline_stage
        return vpp if vpp > 1 else None
    return p.virtual_pipeline_model_parallel_size


def schedule_steps(args: Arguments) -> ScheduleSteps:
    """Warmup / decay / WSD-anneal lengths in the run's unit. In a --train-tokens run each is its
    *-tokens flag; otherwise its *-samples flag or its *-iters flag (steps x the global batch;
    plan_run refuses both), whichever way the run's own length is given; the warmup also as
    --lr-warmup-fraction of the decay (Megatron-LM's). Decay defaults to the whole
    run and the WSD anneal to the whole decay."""
    o, r, gbs = args.optim, args.run, args.data.global_batch_size
    if r.train_tokens is not None:
        run, warmup, decay, wsd = r.train_tokens, o.lr_warmup_tokens, o.lr_decay_tokens, o.lr_wsd_decay_tokens
    else:
        run = r.train_samples if r.train_samples is not None else r.train_iters * gbs
        warmup = o.lr_warmup_samples or o.lr_warmup_iters * gbs
        decay = o.lr_decay_samples or (o.lr_decay_iters or 0) * gbs
        wsd = o.lr_wsd_decay_samples or (o.lr_wsd_decay_iters or 0) * gbs
    decay = decay or run
    if o.lr_warmup_fraction is not None:
        warmup = int(o.lr_warmup_fraction * decay)
    wsd = wsd or decay
    decay = max(decay, warmup + 1)  # megatron asserts warmup < decay (irrelevant for constant)
    return ScheduleSteps(warmup=warmup, decay=decay, wsd_decay=min(wsd, decay))


def describe_schedule(args: Arguments, steps: ScheduleSteps) -> str:
    """The LR schedule in one line, in the unit the run's length is given in (what a user checks after
    shortening a recipe, whose lengths follow the run's: arguments._rescaled_schedule)."""
    o, r = args.optim, args.run
    unit, total = next((unit, getattr(r, f"train_{unit}")) for unit in UNITS if getattr(r, f"train_{unit}"))
    per = args.data.global_batch_size if unit == "iters" else 1  # the steps' lengths are in samples
    name = {"iters": "steps"}.get(unit, unit)

    def count(length: int) -> str:
        return f"{length // per:,}"

    line = f"LR schedule: {count(steps.warmup)}-{name[:-1]} warm-up to {o.lr:.2e}, then "
    if o.lr_decay_style == "constant":
        line += "constant"
    elif o.lr_decay_style == "WSD":
        line += f"stable, and a {o.lr_wsd_decay_style} anneal to {o.min_lr:.2e} over the last {count(steps.wsd_decay)}"
    else:
        line += f"{o.lr_decay_style} decay to {o.min_lr:.2e} over {count(steps.decay)}"
    return line + f" of {total:,} {name}"


def _check_recompute(args: Arguments, model: ModelPlan) -> None:
    """Megatron's recompute rules, in one line each: full recompute needs a method and a layer count
    that fits the layers of a pipeline chunk; selective recompute takes neither."""
    r = args.run
    if r.recompute_granularity != "full":
        if r.recompute_method or r.recompute_num_layers:
            raise ConfigError("--recompute-method and --recompute-num-layers need --recompute-granularity full.")
        return
    per_chunk = model.shape.num_layers // (args.parallel.pipeline_model_parallel_size
                                           * (model.virtual_pipeline_size or 1))
    if not r.recompute_method or not r.recompute_num_layers:
        raise ConfigError("--recompute-granularity full needs --recompute-method (uniform | block) and "
                          "--recompute-num-layers.")
    n = r.recompute_num_layers
    if not 1 <= n <= per_chunk or (r.recompute_method == "uniform" and per_chunk % n):
        need = "a divisor of" if r.recompute_method == "uniform" else "between 1 and"
        raise ConfigError(f"--recompute-num-layers {n} must be {need} the {per_chunk} layers of a pipeline chunk.")


def wandb_save_dir(args: Arguments) -> str | None:
    """Where W&B keeps its local files: --wandb-save-dir, else {--save}/wandb (None without W&B)."""
    r = args.run
    return (r.wandb_save_dir or os.path.join(r.save or ".", "wandb")) if r.wandb_project else None


def _check_output_directories(args: Arguments) -> None:
    """Every directory the run will write is checked now, not at its first save after hours of compute.
    (The default index cache beside the data is not: a run that cannot write it builds its indices
    in memory, with a warning.)"""
    for flag, directory in (("--save", args.run.save), ("--tensorboard-dir", args.run.tensorboard_dir),
                            ("--wandb-save-dir", wandb_save_dir(args)), ("--data-cache-path", args.data.data_cache_path)):
        if directory:
            check_writable(directory, flag)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_units(args: Arguments) -> None:
    """One length of each kind, and one unit per run: a --train-tokens run measures its schedule and
    batch warm-up in tokens (the scheduler then counts tokens), any other run in iterations / samples
    (Megatron-LM's units, which mix freely: an iteration is a global batch of samples)."""
    r, o, d = args.run, args.optim, args.data
    if sum(getattr(r, f"train_{unit}") is not None for unit in UNITS) != 1:
        raise ConfigError("set exactly one of --train-iters, --train-samples and --train-tokens.")
    for length in SCHEDULE_LENGTHS:
        given = [_flag(f"{length}_{unit}") for unit in UNITS if getattr(o, f"{length}_{unit}")]
        if len(given) > 1:
            raise ConfigError(f"pass {' or '.join(given)}, not both.")
    if d.rampup_batch_size is not None and d.rampup_batch_size_tokens is not None:
        raise ConfigError("pass --rampup-batch-size or --rampup-batch-size-tokens, not both.")
    token_run = r.train_tokens is not None
    wrong = ([f"{length}_{unit}" for length in SCHEDULE_LENGTHS
              for unit in (("iters", "samples") if token_run else ("tokens",)) if getattr(o, f"{length}_{unit}")]
             + [name for name in ("rampup_batch_size" if token_run else "rampup_batch_size_tokens",)
                if getattr(d, name) is not None])
    if wrong and token_run:
        raise ConfigError(f"a --train-tokens run counts its schedule in tokens: replace {_flag(wrong[0])} "
                          f"by its tokens form.")
    if wrong:
        raise ConfigError(f"{_flag(wrong[0])} counts tokens, which only a --train-tokens run does: give the "
                          "run length as --train-tokens, or this length in iterations or samples.")


def _fit_rampup(d: DataArgs, dp: int, name: str) -> None:
    """Fit --rampup-batch-size (or its tokens form, ``name``) to this run's data parallelism, in place.

    Megatron's calculator needs START and INCREMENT to be multiples of micro batch x DP whose steps
    land exactly on the global batch. Recipes give them for Ettin's 4 GPUs, so rather than refuse
    another GPU count, round START up to such a multiple (at most the global batch) and INCREMENT up
    to the next such multiple that divides what remains; a START that reaches the global batch leaves
    nothing to ramp, so the warm-up is dropped. One line says what changed.
    """
    flag, rampup = _flag(name), getattr(d, name)
    if len(rampup) != 3:
        length = "TOKENS" if name.endswith("tokens") else "SAMPLES"
        raise ConfigError(f"{flag} takes three numbers: START INCREMENT {length}.")
    start, increment, length = rampup
    if start > d.global_batch_size:
        raise ConfigError(f"{flag} start {start} exceeds --global-batch-size {d.global_batch_size}; lower it.")
    step = d.micro_batch_size * dp
    fitted_start = min(-(-start // step) * step, d.global_batch_size)
    rest = (d.global_batch_size - fitted_start) // step  # in units of step
    units = next((k for k in range(-(-increment // step), rest + 1) if rest % k == 0), rest)
    fitted = [fitted_start, units * step, length] if rest else None
    if fitted != rampup:
        now = " ".join(map(str, fitted)) if fitted else "none (START reaches the global batch)"
        report(f"{flag} {start} {increment} {length} adjusted to {now}: START and INCREMENT "
               f"must be multiples of micro batch x DP = {step} that reach {d.global_batch_size}.")
        setattr(d, name, fitted)
