"""The arguments of a pretraining run: documented dataclasses, one generic command-line converter.

Every field of the dataclasses below is a command-line flag whose name is the field name with
dashes (``tensor_model_parallel_size`` -> ``--tensor-model-parallel-size``, Megatron-LM's names).
A recipe (``--recipe file.yaml``) is a flat YAML mapping of the same names (dashes or underscores);
it may say ``inherit: base.yaml`` (relative to itself) to start from another recipe. Precedence:
field default < recipe (base first) < command line.

``parse_args(argv)`` returns an :class:`Arguments`: what the user said, checked only for its types.
What a run makes of it, checked against the data, the tokenizer and the world, is training/plan.py's.
"""

from __future__ import annotations

import argparse
import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from fractions import Fraction
from pathlib import Path

import yaml

from ..cli import (
    CommandParser,
    fraction,
    fraction_below_one,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from ..config import PRESETS
from ..errors import ConfigError
from ..vocab import MODERNBERT_IDS


def arg(default, help: str, **kwargs):
    """A dataclass field with its ``--help`` text (``choices=`` restricts the values; ``type=``, one of
    cli.py's converters, is a number's range, which the flag and a recipe's value both go through)."""
    factory = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(**factory, metadata={"help": help, **kwargs})


@dataclass
class ModelArgs:
    """What is trained."""

    model_size: str = arg("tiny", "Ettin size preset.", choices=tuple(PRESETS))
    objective: str = arg("mlm", "mlm (encoder), clm (decoder) or mntp (decoder -> encoder, masked "
                         "next-token prediction; trains a bidirectional model).",
                         choices=("mlm", "clm", "mntp"))
    attention_backend: str = arg("auto", "Core attention: auto | sdpa | flex | te | flash.")
    spec: str = arg("auto", "Layer spec: auto (te when Transformer Engine imports) | local | te.")
    global_rope_theta: float = arg(10_000.0, "RoPE base of the global layers.", type=positive_float)
    local_rope_theta: float = arg(10_000.0, "RoPE base of the local layers.", type=positive_float)
    attention_output_dropout: float = arg(0.1, "Dropout on the attention block output (Ettin: 0.1).",
                                          type=fraction_below_one)
    max_position_embeddings: int = arg(8192, "Longest sequence the model accepts.", type=positive_int)
    vocab_size: int | None = arg(None, "Padded vocabulary; default: from --tokenizer-model (rounded "
                                 "up to a multiple of 64), else ModernBERT's "
                                 f"{MODERNBERT_IDS.padded_vocab_size}.", type=positive_int)
    # Megatron-LM's shape flags: each replaces one field of the --model-size preset.
    num_layers: int | None = arg(None, "Transformer layers (default: the preset's).", type=positive_int)
    hidden_size: int | None = arg(None, "Hidden size (default: the preset's).", type=positive_int)
    ffn_hidden_size: int | None = arg(None, "GeGLU intermediate size (default: the preset's).", type=positive_int)
    num_attention_heads: int | None = arg(None, "Attention heads (default: the preset's).", type=positive_int)


@dataclass
class ParallelArgs:
    """How the model and the batch are cut over processes (data parallel = world / (TP x PP))."""

    tensor_model_parallel_size: int = arg(1, "Tensor parallel size.", type=positive_int)
    pipeline_model_parallel_size: int = arg(1, "Pipeline parallel size.", type=positive_int)
    virtual_pipeline_model_parallel_size: int | None = arg(None, "Model chunks per pipeline rank "
                                                           "(interleaved 1F1B).", type=positive_int)
    num_layers_per_virtual_pipeline_stage: int | None = arg(None, "Alternative to the above: layers "
                                                            "per model chunk.", type=positive_int)
    sequence_parallel: bool = arg(False, "Megatron sequence parallelism (with TP > 1).")
    use_distributed_optimizer: bool = arg(False, "Shard optimizer state over data parallel ranks.")
    overlap_grad_reduce: bool = arg(False, "Overlap the gradient reduce with the backward pass.")


@dataclass
class DataArgs:
    """Where samples come from and how they are batched."""

    data_path: list[str] = arg([], "Megatron-LM blend: 'prefix' or 'w1 prefix1 w2 prefix2 ...' "
                               "(IndexedDataset prefixes from tools/preprocess_data.py).")
    data_mix: str | None = arg(None, "Mixture YAML (see examples/mixtures/); replaces --data-path.")
    split: str = arg("969,30,1", "Train,valid,test split of the documents.")
    data_layout: str = arg("document", "document (Ettin: one chunk of a document per sample) | packed "
                           "(ModernBERT: chunks packed up to --seq-length) | concat (GPT).",
                           choices=("document", "packed", "concat"))
    min_chunk_size: int | None = arg(None, "A document's last piece shorter than this takes a random number "
                                     "of tokens from the piece before it (Ettin's backfill; default 512, "
                                     "half of --seq-length below 1024).", type=non_negative_int)
    always_skip_size: int | None = arg(None, "A piece shorter than this is dropped unless it is the "
                                       "document's first (Ettin; default 128, 1/8 of --seq-length below 1024).",
                                       type=non_negative_int)
    data_cache_path: str | None = arg(None, "Directory of the sample-index cache: rank 0 builds the indices "
                                      "once, every rank memory-maps them, later runs reuse them (default: "
                                      "cache/ beside the data).")
    tokenizer_model: str | None = arg(None, "tokenizer.json (or its directory) the data was made with.")
    tokenizer_type: str = arg("HuggingFaceTokenizer", "Megatron-LM's tokenizer kind; --tokenizer-model is "
                              "always a Hugging Face tokenizer.", choices=("HuggingFaceTokenizer",))
    seq_length: int = arg(1024, "Maximum tokens per sample (documents are cut into chunks of this size).",
                          type=positive_int)
    micro_batch_size: int = arg(4, "Samples per micro-batch (packed into one unpadded row).", type=positive_int)
    global_batch_size: int = arg(32, "Samples per optimizer step (Ettin: 4608).", type=positive_int)
    rampup_batch_size: list[int] | None = arg(None, "Batch-size warm-up: START INCREMENT SAMPLES "
                                              "(Megatron-LM's --rampup-batch-size; START and INCREMENT are "
                                              "rounded up to multiples of micro batch x DP).", type=positive_int)
    rampup_batch_size_tokens: list[int] | None = arg(None, "--rampup-batch-size of a --train-tokens run: "
                                                     "START INCREMENT TOKENS, the batch (in samples) grows "
                                                     "from START by INCREMENT over TOKENS input tokens.",
                                                     type=positive_int)
    mask_rate: float = arg(0.3, "MLM / MNTP masking rate of the training split (eval uses 15%).",
                           aliases=("--mask-prob",), type=fraction)
    num_workers: int = arg(2, "Data-loader worker processes per rank reading and collating micro-batches "
                           "ahead of the step (0: read in the training process).", type=non_negative_int)


@dataclass
class OptimArgs:
    """The optimizer (AdamW or StableAdamW, no weight decay on norms and biases) and the LR schedule."""

    optimizer: str = arg("adam", "adam (AdamW: Megatron-Core's) | stableadamw (Ettin's: AdamW whose step "
                         "size each tensor's update RMS clips, in place of gradient clipping).",
                         choices=("adam", "stableadamw"))

    lr: float = arg(3e-3, "Peak learning rate.", type=positive_float)
    min_lr: float = arg(0.0, "LR at the end of the decay.", type=non_negative_float)
    lr_decay_style: str = arg("constant", "constant (warmup-stable) | linear | cosine | WSD.",
                              choices=("constant", "linear", "cosine", "WSD", "inverse-square-root"))
    lr_wsd_decay_style: str = arg("minus_sqrt", "WSD anneal shape: minus_sqrt (1-sqrt) | linear | "
                                  "cosine | exponential.",
                                  choices=("minus_sqrt", "linear", "cosine", "exponential"))
    lr_warmup_init: float = arg(0.0, "LR at step 0 of the warmup.", type=non_negative_float)
    # Each schedule length may be given in steps (x the global batch) or in samples, whichever way the
    # run's length is given (one of the pair, not both); a --train-tokens run gives them in tokens.
    lr_warmup_iters: int = arg(0, "Linear warmup in optimizer steps.", type=non_negative_int)
    lr_warmup_samples: int = arg(0, "Linear warmup in samples (instead of --lr-warmup-iters).", type=non_negative_int)
    lr_warmup_tokens: int = arg(0, "Linear warmup in input tokens (--train-tokens runs).", type=non_negative_int)
    lr_warmup_fraction: float | None = arg(None, "Linear warmup as a fraction of the decay length "
                                           "(instead of the two above).", type=fraction_below_one)
    lr_decay_iters: int | None = arg(None, "Steps over which the LR decays (default: the whole run).",
                                     type=positive_int)
    lr_decay_samples: int | None = arg(None, "Samples over which the LR decays (instead of "
                                       "--lr-decay-iters).", type=positive_int)
    lr_decay_tokens: int | None = arg(None, "Input tokens over which the LR decays (--train-tokens runs; "
                                      "default: the whole run).", type=positive_int)
    lr_wsd_decay_iters: int | None = arg(None, "WSD: the final annealing steps (default: all decay steps).",
                                         type=positive_int)
    lr_wsd_decay_samples: int | None = arg(None, "WSD: the final annealing samples (instead of "
                                           "--lr-wsd-decay-iters).", type=positive_int)
    lr_wsd_decay_tokens: int | None = arg(None, "WSD: the final annealing input tokens (--train-tokens runs).",
                                          type=positive_int)
    weight_decay: float = arg(3e-4, "Decoupled weight decay (not on norms and biases): each step "
                              "p <- p (1 - lr x wd), AdamW's rule.", type=non_negative_float)
    fully_decoupled_weight_decay: bool = arg(False, "Weight decay independent of the LR's size (optimi's "
                                             "decouple_lr, Ettin's): p <- p (1 - wd x lr / --lr), so wd is "
                                             "the share removed per step at peak LR.")
    adam_beta1: float = arg(0.9, "Adam beta1.", type=fraction_below_one)
    adam_beta2: float = arg(0.98, "Adam beta2.", type=fraction_below_one)
    adam_eps: float = arg(1e-6, "Adam epsilon.", type=non_negative_float)
    clip_grad: float | None = arg(None, "Global gradient-norm clip, 0 for none (default: 1.0 with adam, 0 with "
                                  "stableadamw, whose per-tensor update clip replaces it).", type=non_negative_float)


@dataclass
class RunArgs:
    """Length, precision, checkpoints, logging."""

    recipe: str | None = arg(None, "YAML recipe setting any of these fields; flags override it.")
    train_iters: int | None = arg(None, "Optimizer steps to train.", type=positive_int)
    train_samples: int | None = arg(None, "Samples to train (alternative to --train-iters).", type=positive_int)
    train_tokens: int | None = arg(None, "Input tokens to train (Ettin's budgets; alternative to the two "
                                   "above): the run stops at the first step that reaches them, and its "
                                   "LR schedule and batch warm-up count tokens too.", type=positive_int)
    seed: int = arg(21, "Seed of the model init, dropout and data order (Ettin: 21).", type=non_negative_int)
    bf16: bool = arg(False, "BF16 mixed precision (fp32 main weights and grads).")
    fp16: bool = arg(False, "Refused: Ettin trains in BF16 (FP16 would need loss scaling); use --bf16.")
    fp8_format: str | None = arg(None, "FP8 GEMMs through Transformer Engine: e4m3 | hybrid.",
                                 choices=(None, "e4m3", "hybrid"))
    save: str | None = arg(None, "Checkpoint root to save to.")
    save_interval: int | None = arg(None, "Save every N steps (and at the end).", type=non_negative_int)
    load: str | None = arg(None, "Checkpoint root (or iter dir) to resume from; missing or empty = fresh.")
    finetune: bool = arg(False, "With --load: weights only, fresh optimizer, schedule and data.")
    override_opt_param_scheduler: bool = arg(False, "On resume, this run's LR schedule replaces the "
                                             "checkpoint's where they differ.",
                                             aliases=("--override-opt_param-scheduler",))
    use_checkpoint_opt_param_scheduler: bool = arg(False, "On resume, keep the checkpoint's LR schedule "
                                                   "where this run's differs.",
                                                   aliases=("--use-checkpoint-opt_param-scheduler",))
    log_interval: int = arg(10, "Log every N steps.", type=non_negative_int)
    eval_interval: int | None = arg(None, "Validate every N steps (None: only at the end).", type=non_negative_int)
    eval_iters: int = arg(10, "Validation steps (global batches) per evaluation (0: none).", type=non_negative_int)
    recompute_granularity: str | None = arg(None, "Activation recompute: full (whole layers, see "
                                            "--recompute-method) | selective (core attention only).",
                                            choices=(None, "full", "selective"))
    recompute_method: str | None = arg(None, "Full recompute: uniform (every layer, in groups of "
                                       "--recompute-num-layers) | block (the first --recompute-num-layers "
                                       "layers of each pipeline chunk).", choices=(None, "uniform", "block"))
    recompute_num_layers: int | None = arg(None, "Full recompute: layers per group (uniform) or "
                                           "recomputed layers per pipeline chunk (block).", type=positive_int)
    tensorboard_dir: str | None = arg(None, "TensorBoard event directory.")
    validate_only: bool = arg(False, "Check the arguments, data and --load in this one process, then exit "
                              "(0, or 2 with the error) without training; the launchers run it before torchrun.")
    wandb_project: str | None = arg(None, "Weights & Biases project to log the TensorBoard scalars to "
                                    "(pip install ettin-megatron[wandb]; WANDB_MODE=offline to keep it local).")
    wandb_exp_name: str | None = arg(None, "W&B run name (default: W&B picks one).")
    wandb_save_dir: str | None = arg(None, "Directory for W&B's local files (default: {--save}/wandb).")
    exit_interval: int | None = arg(None, "Stop (after saving) at a step divisible by N.", type=non_negative_int)
    exit_duration_in_mins: float | None = arg(None, "Save and stop (exit 0) after the step during which "
                                              "this many minutes have passed; relaunch to resume.", type=positive_float)
    exit_signal_handler: bool = arg(False, "On SIGTERM, SIGINT or --exit-signal: finish the step, save, exit 0.")
    exit_signal: str = arg("SIGTERM", "The signal --exit-signal-handler also catches (SLURM: --signal).",
                           choices=("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2"))
    check_for_nan_in_loss_and_grad: bool = arg(True, "Stop (exit non-zero, nothing saved) before the "
                                               "optimizer step when the loss or a gradient is NaN or Inf.")


SCHEDULE_LENGTHS = ("lr_warmup", "lr_decay", "lr_wsd_decay")
"""LR schedule lengths with an ``_iters``, a ``_samples`` and a ``_tokens`` form (see
optimizer.schedule_steps)."""

UNITS = ("iters", "samples", "tokens")

ALTERNATIVES = (("data_path", "data_mix"), tuple(f"train_{unit}" for unit in UNITS),
                ("rampup_batch_size", "rampup_batch_size_tokens"),
                (*(f"lr_warmup_{unit}" for unit in UNITS), "lr_warmup_fraction"),
                *(tuple(f"{length}_{unit}" for unit in UNITS) for length in SCHEDULE_LENGTHS[1:]))
"""Fields that say one thing in different forms: a form given on the command line drops the recipe's
others."""

GROUPS = {"model": ModelArgs, "parallel": ParallelArgs, "data": DataArgs, "optim": OptimArgs, "run": RunArgs}


@dataclass
class Arguments:
    """All of a run's arguments, by group: ``args.optim.lr``, ``args.parallel.tensor_model_parallel_size``."""

    model: ModelArgs = field(default_factory=ModelArgs)
    parallel: ParallelArgs = field(default_factory=ParallelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    run: RunArgs = field(default_factory=RunArgs)


def _field_index() -> dict:
    """field name -> (group name, dataclass field)."""
    return {f.name: (group, f) for group, cls in GROUPS.items() for f in fields(cls)}


def _unwrap(annotation):
    """The type a flag converts to, whether it is a list, and whether it may be None."""
    # annotations are strings under ``from __future__ import annotations``
    hint = eval(annotation, vars(typing), {"list": list}) if isinstance(annotation, str) else annotation
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True, optional
    return hint, False, optional


def _convert(name: str, value, f):
    """Bring a recipe value to the type of field ``f`` (YAML gives numbers as int/float/str), in its range."""
    base, is_list, optional = _unwrap(f.type)
    convert = f.metadata.get("type", base)
    if value is None:
        if optional or is_list:
            return value
        raise ConfigError(f"{name} may not be null.")
    try:
        if is_list:
            items = value.split() if isinstance(value, str) else value
            return [convert(v) for v in items]
        if base is bool:
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        return convert(value)
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"{name}: {error}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot read {value!r} as {base.__name__}.") from None


def build_parser() -> argparse.ArgumentParser:
    """One argparse flag per dataclass field, derived from its type; defaults are SUPPRESSed so that
    only the flags actually given override the recipe."""
    parser = CommandParser(
        prog="python -m ettin_megatron.pretrain", description="Pretrain an Ettin encoder or decoder.",
        usage="%(prog)s [--recipe YAML] [--FLAG VALUE ...]   (the flags, by group, below)",  # not 80 lines of them
        argument_default=argparse.SUPPRESS, allow_abbrev=False,
    )
    for group, cls in GROUPS.items():
        section = parser.add_argument_group(group, cls.__doc__)
        for f in fields(cls):
            _add_flag(section, f)
    return parser


def add_run_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """Pretrain's flags of the fields ``names`` on another command's parser (e.g. tools/evaluate_run.py's
    data flags), with pretrain's help, types and choices. Defaults are SUPPRESSed: ``make_arguments``
    of the given ones gives every other field pretrain's default, so a flag means what it means there."""
    index = _field_index()
    for name in names:
        _add_flag(parser, index[name][1], default=argparse.SUPPRESS)


def _add_flag(section, f, **options) -> None:
    """The argparse flag of dataclass field ``f``, derived from its type."""
    base, is_list, _ = _unwrap(f.type)
    flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
    help_text = f.metadata["help"].replace("%", "%%")
    if "default" not in help_text:  # a help that explains its default says it once
        help_text += f" (default: {f.default if f.default is not MISSING else '[]'})"
    if base is bool:
        section.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text, **options)
    else:
        choices = f.metadata.get("choices")
        section.add_argument(*flags, dest=f.name, type=f.metadata.get("type", base), nargs="+" if is_list else None,
                             help=help_text, choices=[c for c in choices if c is not None] if choices else None,
                             **options)


PATH_FIELDS = ("data_mix", "tokenizer_model")
"""Recipe values that are paths: a relative one is relative to the recipe file."""


def read_recipe(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """A recipe's flat {field: value}, after its ``inherit:`` base(s) (a path or a list, applied in order)."""
    path = Path(path)
    if not path.is_file():
        named = f"--recipe {path}" if not _seen else f"recipe {path} (inherited)"
        raise ConfigError(f"{named} does not exist; see examples/recipes/ for the available ones.")
    if path.resolve() in _seen:
        raise ConfigError(f"recipe {path} inherits from itself.")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of argument names to values.")
    values = {}
    bases = data.pop("inherit", None) or []
    for base in [bases] if isinstance(bases, str) else bases:
        values.update(read_recipe(path.parent / base, _seen + (path.resolve(),)))
    index = _field_index()
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in index:
            raise ConfigError(f"recipe {path}: unknown argument {key!r}; run with --help for the list.")
        if name in PATH_FIELDS and isinstance(value, str) and not os.path.isabs(os.path.expandvars(value)):
            value = os.path.normpath(path.parent / value)
        values[name] = _convert(name, value, index[name][1])
    return values


def parse_args(argv: list[str] | None = None) -> Arguments:
    """Defaults, then the recipe (if ``--recipe``), then the flags given on the command line."""
    given = vars(build_parser().parse_args(argv))
    recipe = read_recipe(given["recipe"]) if given.get("recipe") else {}
    values = dict(recipe)
    for forms in ALTERNATIVES:  # the command line's data / lengths replace the recipe's, whichever form
        if any(form in given for form in forms):
            for form in forms:
                values.pop(form, None)
    values.update(given)
    values.update(_rescaled_schedule(recipe, given, values))
    return make_arguments(**values)


def _run_length(values: dict) -> tuple[str, int] | None:
    """(unit, length) of the train_* form ``values`` give, if any."""
    return next(((unit, values[f"train_{unit}"]) for unit in UNITS if values.get(f"train_{unit}")), None)


def _rescaled_schedule(recipe: dict, given: dict, values: dict) -> dict:
    """A recipe run to another length keeps its shape: each schedule length the recipe sets (warm-up,
    decay, WSD anneal, batch ramp-up) and the command line does not becomes the same share of the new
    length, in the new length's unit, rounded up (a length stays at least one step). Without this,
    ``--train-iters 30`` on a 300-step recipe would keep its 91-step anneal (the LR never leaves its
    peak), and on an Ettin recipe would keep token lengths that an iteration run cannot use.
    Returns the fields to replace (none when the recipe's own length stands)."""
    old, new = _run_length(recipe), _run_length(given)
    if old is None or new is None:
        return {}
    batch = values.get("global_batch_size", DataArgs.global_batch_size)
    seq_length = values.get("seq_length", DataArgs.seq_length)

    def samples(unit: str, length: int) -> Fraction:  # exact: a share of 1/3 must not round up to 2
        return {"iters": Fraction(length * batch), "samples": Fraction(length),
                "tokens": Fraction(length, seq_length)}[unit]

    def rescaled(unit: str, length: int, into: str) -> int:
        return math.ceil(samples(unit, length) / samples(*old) * samples(*new) / samples(into, 1))

    index, new_unit = _field_index(), new[0]
    changes = {}
    for length in SCHEDULE_LENGTHS:
        forms = {f"{length}_{unit}": unit for unit in UNITS}
        recipe_form = next((form for form in forms if recipe.get(form)), None)
        if recipe_form and not any(form in given for form in forms):
            changes.update({form: index[form][1].default for form in forms})
            changes[f"{length}_{new_unit}"] = rescaled(forms[recipe_form], recipe[recipe_form], new_unit)
    ramps = {"rampup_batch_size": "samples", "rampup_batch_size_tokens": "tokens"}
    recipe_ramp = next((name for name in ramps if recipe.get(name)), None)
    if recipe_ramp and not any(name in given for name in ramps):
        start, increment, length = recipe[recipe_ramp]
        into = "tokens" if new_unit == "tokens" else "samples"
        changes.update(dict.fromkeys(ramps))
        changes[next(name for name, unit in ramps.items() if unit == into)] = [
            start, increment, rescaled(ramps[recipe_ramp], length, into)]
    return changes


def make_arguments(**values) -> Arguments:
    """Arguments from flat field values (what tests and scripts use): ``make_arguments(lr=1e-3)``."""
    index = _field_index()
    grouped = {group: {} for group in GROUPS}
    for name, value in values.items():
        if name not in index:
            raise ConfigError(f"unknown argument {name!r}; run with --help for the list.")
        group, f = index[name]
        grouped[group][name] = _convert(name, value, f)
    return Arguments(**{group: cls(**grouped[group]) for group, cls in GROUPS.items()})
