"""Bad configurations stop before any compute with one clear line; flags, recipes and inheritance.

``python -m ettin_megatron.pretrain`` (here: its ``main``, in-process) returns status 2 and prints one
``error: ...`` line; nothing is initialized (no process group), so these cases cost milliseconds.
"""

import importlib.util
import re
from dataclasses import fields
from pathlib import Path

import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from ettin_megatron.pretrain import main
from ettin_megatron.training.arguments import GROUPS, make_arguments, parse_args, read_recipe
from ettin_megatron.training.plan import plan_run
from tests.training.training_data import pretrain_error, write_corpus

RECIPES = Path("examples/recipes")


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("data"), num_docs=1000)  # the recipes' 999,1,0: 1 valid document


@pytest.mark.parametrize("argv, message", [
    (["--global-batch-size", "10", "--micro-batch-size", "4"], "not divisible by micro batch size 4"),
    (["--seq-length", "9000"], "exceeds the model's position limit 8192"),
    (["--train-samples", "40", "--train-iters", "5"], "exactly one of --train-iters, --train-samples and --train-tokens"),
    (["--train-tokens", "400", "--train-iters", "5"], "exactly one of --train-iters, --train-samples and --train-tokens"),
    (["--rampup-batch-size", "64", "8", "100"], "start 64 exceeds --global-batch-size 32"),
    (["--rampup-batch-size", "8", "8", "0"], "--rampup-batch-size: must be a positive integer, got 0"),
    (["--lr-decay-iters", "4", "--lr-decay-samples", "32"], "--lr-decay-iters or --lr-decay-samples, not both"),
    (["--lr-decay-samples", "32", "--lr-decay-tokens", "99"], "--lr-decay-samples or --lr-decay-tokens, not both"),
    (["--train-tokens", "400", "--lr-warmup-iters", "2"],
     "a --train-tokens run counts its schedule in tokens: replace --lr-warmup-iters by its tokens form."),
    (["--train-tokens", "400", "--rampup-batch-size", "8", "8", "64"],
     "a --train-tokens run counts its schedule in tokens: replace --rampup-batch-size by its tokens form."),
    (["--lr-wsd-decay-tokens", "100"], "--lr-wsd-decay-tokens counts tokens, which only a --train-tokens run does"),
    (["--rampup-batch-size-tokens", "8", "8", "100"], "--rampup-batch-size-tokens counts tokens, which only"),
    (["--rampup-batch-size", "8", "8", "100", "--rampup-batch-size-tokens", "8", "8", "100"],
     "pass --rampup-batch-size or --rampup-batch-size-tokens, not both."),
    (["--train-tokens", "400", "--rampup-batch-size-tokens", "8", "8"],
     "--rampup-batch-size-tokens takes three numbers: START INCREMENT TOKENS."),
    (["--finetune"], "--finetune needs --load"),
    (["--recompute-granularity", "full"], "needs --recompute-method (uniform | block) and --recompute-num-layers"),
    (["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "3"],
     "--recompute-num-layers 3 must be a divisor of the 4 layers of a pipeline chunk"),
    (["--recompute-method", "block"], "need --recompute-granularity full"),
])
def test_bad_configs_fail_in_one_line(capsys, prefix, argv, message):
    base = ["--data-path", prefix, "--train-iters", "5"]
    if "--train-samples" in argv or "--train-tokens" in argv:
        base = base[:2]
    line = pretrain_error(capsys, base + argv)
    assert message in line


@pytest.mark.parametrize("argv, line", [
    (["--train-iters", "0"], "error: --train-iters: must be a positive integer, got 0"),
    (["--train-iters", "-3"], "error: --train-iters: must be a positive integer, got -3"),
    (["--train-tokens", "0"], "error: --train-tokens: must be a positive integer, got 0"),
    (["--micro-batch-size", "0"], "error: --micro-batch-size: must be a positive integer, got 0"),
    (["--global-batch-size", "-4"], "error: --global-batch-size: must be a positive integer, got -4"),
    (["--mask-rate", "1.5"], "error: --mask-rate/--mask-prob: must be a number from 0 to 1, got 1.5"),
    (["--lr", "-0.001"], "error: --lr: must be a positive number, got -0.001"),
    (["--adam-beta2", "1"], "error: --adam-beta2: must be a number >= 0 and < 1, got 1"),
    (["--num-workers", "-1"], "error: --num-workers: must be an integer >= 0, got -1"),
    (["--seq-length", "abc"], "error: --seq-length: must be a positive integer, got abc"),
])
def test_numbers_out_of_range_are_refused_when_parsed(capsys, tmp_path, prefix, argv, line):
    """Issue 27: a 0 or negative --train-iters trained nothing and saved an iter_0000000 without optimizer
    state, which every later run into that --save crashed on; a 0 micro batch divided by zero after
    torchrun had started. Each number's range is checked as the flag is read, before anything is
    written."""
    save = tmp_path / "ckpt"
    assert pretrain_error(capsys, ["--data-path", prefix, "--save", str(save), *argv]) == line
    assert not save.exists()


def test_recipe_numbers_have_the_flags_ranges(capsys, tmp_path, prefix):
    (tmp_path / "r.yaml").write_text("micro_batch_size: 0\n")
    assert pretrain_error(capsys, ["--recipe", str(tmp_path / "r.yaml"), "--data-path", prefix]) == (
        "error: micro_batch_size: must be a positive integer, got 0")


def test_every_numeric_flag_declares_its_range():
    """A number a run takes gets its range from its field (``arg(..., type=positive_int)``), which its
    default is in: a new numeric flag cannot forget it."""
    for cls in GROUPS.values():
        for f in fields(cls):
            if re.search(r"\b(int|float)\b", f.type):
                assert "type" in f.metadata, f.name
                if isinstance(f.default, (int, float)):
                    f.metadata["type"](f.default)


@pytest.mark.parametrize("blend, line", [
    (["-1", "{prefix}", "0.3", "{prefix}"], "error: --data-path weight -1 of {prefix} must be a positive number "
     "(its share of the samples): change it, or drop the pair to leave that dataset out."),
    (["0", "{prefix}", "0", "{prefix}"], "error: --data-path weight 0 of {prefix} must be a positive number "
     "(its share of the samples): change it, or drop the pair to leave that dataset out."),
    (["{prefix}", "0.3", "0.7", "{prefix}"], "error: --data-path takes prefixes, or weight-prefix pairs "
     "'W1 P1 W2 P2 ...': check that each weight is a number and comes before its prefix."),
])
def test_blend_weights_are_checked(capsys, prefix, blend, line):
    """megatron asserts on a negative weight (a bare AssertionError, after torchrun started)."""
    argv = ["--data-path", *(item.format(prefix=prefix) for item in blend), "--train-iters", "5"]
    assert pretrain_error(capsys, argv) == line.format(prefix=prefix)


def test_a_split_without_documents_is_refused_before_any_compute(capsys, tmp_path):
    """Issue 27: a corpus too small for the validation split failed only once torchrun had started, with a
    hint (a shorter sequence) that would not help."""
    small = write_corpus(tmp_path, num_docs=3)  # 969,30,1 of 3 documents: 3 train, 0 valid
    base = ["--data-path", small, "--train-iters", "2", "--save", str(tmp_path / "ckpt"), "--validate-only"]
    assert pretrain_error(capsys, base) == (
        f"error: --split 969,30,1 leaves none of the 3 documents of {small} for validation: pass --eval-iters 0 "
        "(no validation), a --split without validation (e.g. 100,0,0), or more data.")
    assert pretrain_error(capsys, base + ["--split", "0,1,0"]) == (
        f"error: --split 0,1,0 leaves none of the 3 documents of {small} for training: raise its first number, "
        "or use more data.")
    assert pretrain_error(capsys, base + ["--split", "0,0"]) == (
        "error: --split 0,0 must be up to three numbers, the train,valid,test shares of the documents "
        "(e.g. 969,30,1), with a positive sum.")
    assert not (tmp_path / "ckpt").exists()
    assert main(base + ["--eval-iters", "0"]) == 0 and main(base + ["--split", "100,0,0"]) == 0


def test_missing_data(capsys, tmp_path):
    assert "no training data" in pretrain_error(capsys, ["--train-iters", "5"])
    assert "no dataset at" in pretrain_error(capsys, ["--train-iters", "5", "--data-path", str(tmp_path / "nope")])


@pytest.mark.parametrize("spec, message", [
    ("auto", "install ettin-megatron[gpu] (transformer-engine) or drop --fp8-format"),
    ("local", "drop --spec local or --fp8-format"),
])
def test_fp8_without_transformer_engine_layers_is_refused(capsys, prefix, spec, message):
    """Megatron's local linears ignore --fp8-format: the run would train in BF16 without a word."""
    from ettin_megatron.model.layer_specs import te_available

    if spec == "auto" and te_available():
        pytest.skip("Transformer Engine is installed: --spec auto resolves to its layers")
    line = pretrain_error(capsys, ["--data-path", prefix, "--train-iters", "5", "--bf16", "--fp8-format", "hybrid",
                                   "--spec", spec])
    assert line.startswith("error: --fp8-format hybrid needs Transformer Engine's layers") and message in line


def test_rampup_is_fitted_to_data_parallelism(capsys, prefix):
    """The recipes' warm-up starts at micro x 4 GPUs; at 8 GPUs (DP 8) megatron needs multiples of micro x 8."""
    args = parse_args(["--recipe", str(RECIPES / "encoder/150m/phase1.yaml"), "--data-path", prefix])
    start, increment, tokens = args.data.rampup_batch_size_tokens
    assert (start, increment) == (288, 288)  # micro batch 72 x 4
    assert plan_run(args, world_size=8).data_parallel_size == 8
    assert args.data.rampup_batch_size_tokens == [576, 576, tokens]  # 72 x 8, and 576 divides 4608 - 576
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [f"--rampup-batch-size-tokens 288 288 {tokens} adjusted to 576 576 {tokens}: START and "
                       "INCREMENT must be multiples of micro batch x DP = 576 that reach 4608."]

    def fitted(rampup, world_size=1):
        args = make_arguments(data_path=[prefix], train_iters=5, micro_batch_size=4, global_batch_size=32,
                              rampup_batch_size=rampup)
        plan_run(args, world_size)
        return args.data.rampup_batch_size

    assert fitted([6, 10, 100]) == [8, 12, 100]  # 12: the first multiple of 4 >= 10 that divides 32 - 8
    assert fitted([8, 8, 100], world_size=2) == [8, 8, 100]  # already fits: unchanged
    assert fitted([24, 4, 100], world_size=4) is None  # 24 -> 32 (micro 4 x DP 4 = 16): nothing to ramp
    capsys.readouterr()


def test_schedule_length_flag_replaces_the_recipes_other_form(tmp_path, prefix):
    (tmp_path / "r.yaml").write_text("lr_warmup_samples: 64\n")
    args = parse_args(["--recipe", str(tmp_path / "r.yaml"), "--lr-warmup-iters", "3", "--data-path", prefix,
                       "--train-iters", "5"])
    assert (args.optim.lr_warmup_iters, args.optim.lr_warmup_samples) == (3, 0)
    plan_run(args, world_size=1)
    # A token recipe's lengths, replaced on the command line by another unit (a short smoke run).
    args = parse_args(["--recipe", str(RECIPES / "cross/encoder-to-decoder/17m.yaml"), "--data-path", prefix,
                       "--train-iters", "5", "--lr-warmup-iters", "1", "--lr-wsd-decay-iters", "2"])
    assert (args.run.train_tokens, args.optim.lr_warmup_tokens, args.optim.lr_wsd_decay_tokens) == (None, 0, None)
    assert (args.run.train_iters, args.optim.lr_warmup_iters, args.optim.lr_wsd_decay_iters) == (5, 1, 2)


def test_a_recipe_run_to_another_length_keeps_its_schedules_shares(tmp_path, prefix):
    """Issue 27, item 8: a recipe shortened on the command line kept its absolute warm-up, anneal and
    ramp-up (an anneal longer than the run, or token lengths an iteration run refuses). Each is now the
    recipe's share of the new length, in its unit, rounded up; a length the command line gives stays."""
    (tmp_path / "r.yaml").write_text("train_iters: 300\nlr_warmup_iters: 30\nlr_decay_style: WSD\n"
                                     "lr_wsd_decay_iters: 90\nrampup_batch_size: [8, 8, 960]\n")
    recipe = ["--recipe", str(tmp_path / "r.yaml"), "--data-path", prefix]
    args = parse_args(recipe + ["--train-iters", "30"])
    assert (args.optim.lr_warmup_iters, args.optim.lr_wsd_decay_iters, args.data.rampup_batch_size) == (
        3, 9, [8, 8, 96])  # exact shares: a tenth of each, not rounded up past it
    args = parse_args(recipe + ["--train-iters", "31", "--lr-wsd-decay-iters", "5"])
    assert (args.optim.lr_warmup_iters, args.optim.lr_wsd_decay_iters) == (4, 5)  # 3.1 up to 4; 5 as given
    args = parse_args(recipe + ["--train-tokens", "96000", "--seq-length", "100"])  # 30 iterations' worth
    assert (args.optim.lr_warmup_iters, args.optim.lr_warmup_tokens, args.optim.lr_wsd_decay_tokens,
            args.data.rampup_batch_size, args.data.rampup_batch_size_tokens) == (0, 9600, 28800, None, [8, 8, 9600])
    plan_run(args, world_size=1)
    ettin = parse_args(["--recipe", str(RECIPES / "encoder/17m/phase1.yaml"), "--data-path", prefix,
                        "--train-iters", "30"])  # 4B warm-up and 125B ramp of 1.7T tokens, at 4,608 a step
    assert (ettin.optim.lr_warmup_tokens, ettin.optim.lr_warmup_iters) == (0, 1)
    assert (ettin.data.rampup_batch_size_tokens, ettin.data.rampup_batch_size) == (None, [576, 576, 10165])
    plan_run(ettin, world_size=1)  # refused before: "--lr-warmup-tokens counts tokens ..."
    assert parse_args(["--recipe", str(tmp_path / "r.yaml")]).optim.lr_wsd_decay_iters == 90  # the recipe's length


def test_sentence_level_data_fails_before_any_work(capsys, tmp_path):
    prefix = str(tmp_path / "sentences")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    builder.add_document(numpy.arange(12), [5, 7])
    builder.finalize(prefix + ".idx")
    line = pretrain_error(capsys, ["--data-path", prefix, "--train-iters", "5"])
    assert line == (f"error: {prefix} is a sentence-level dataset (from --split-sentences); Ettin trains on "
                    "documents: preprocess without --split-sentences.")


def test_unknown_recipe_and_unknown_recipe_key(capsys, tmp_path):
    assert "does not exist" in pretrain_error(capsys, ["--recipe", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    assert "unknown argument 'learning_rate'" in pretrain_error(capsys, ["--recipe", str(bad)])


def test_flags_override_recipe_which_overrides_its_base(tmp_path):
    (tmp_path / "base.yaml").write_text("lr: 0.1\nmin-lr: 0.01\nmicro_batch_size: 2\n")
    (tmp_path / "child.yaml").write_text("inherit: base.yaml\nlr: 0.2\ndata_mix: mix.yaml\n")
    args = parse_args(["--recipe", str(tmp_path / "child.yaml"), "--micro-batch-size", "3", "--bf16"])
    assert (args.optim.lr, args.optim.min_lr, args.data.micro_batch_size, args.run.bf16) == (0.2, 0.01, 3, True)
    assert args.data.data_mix == str(tmp_path / "mix.yaml")  # relative to the recipe


def test_every_recipe_parses_and_matches_its_generator():
    spec = importlib.util.spec_from_file_location("generate", RECIPES / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    expected = generate.recipes()
    for name, text in expected.items():
        assert (RECIPES / name).read_text() == text, f"{name} is stale: run python examples/recipes/generate.py"
        if name != "common.yaml" and "/tiny/" not in name:
            args = parse_args(["--recipe", str(RECIPES / name)])
            assert args.data.global_batch_size == 4608 and args.run.seed == 21
    decoder = read_recipe(RECIPES / "decoder/150m/phase2.yaml")
    assert decoder["objective"] == "clm" and decoder["lr"] == 8e-4 and decoder["min_lr"] == 4e-4


# Ettin's token numbers, written here from shared/ettin-recipe.md (not read back from generate.py).
PHASE_TOKENS = {1: 1_700_000_000_000, 2: 250_000_000_000, 3: 50_000_000_000}
LR_WARMUP_TOKENS = {"17m": 4e9, "32m": 4e9, "68m": 3e9, "150m": 3e9, "400m": 2e9, "1b": 2e9}
BATCH_WARMUP_TOKENS = {"17m": 125e9, "32m": 100e9, "68m": 75e9, "150m": 50e9, "400m": 10e9, "1b": 3e9}
MICRO_BATCH = {"17m": 144, "32m": 128, "68m": 96, "150m": 72, "400m": 48, "1b": 24}


@pytest.mark.parametrize("size", list(LR_WARMUP_TOKENS))
def test_recipes_carry_ettins_token_budgets(prefix, size):
    """Phase lengths, LR and batch-size warm-ups and the cross-objective lengths are the paper's token
    counts, and the schedule the run builds from them counts tokens (4 GPUs, as Ettin: no adjustment)."""
    from ettin_megatron.training.plan import ScheduleSteps, schedule_steps

    def run(name, *flags):
        args = parse_args(["--recipe", str(RECIPES / name), "--data-path", prefix, *flags])
        plan_run(args, world_size=4)
        return args, schedule_steps(args)

    for kind in ("encoder", "decoder"):
        for phase, length in PHASE_TOKENS.items():
            args, steps = run(f"{kind}/{size}/phase{phase}.yaml")
            assert (args.run.train_tokens, args.run.train_samples, args.run.train_iters) == (length, None, None)
            if phase == 1:  # warmup-stable, batch-size warm-up from one micro-batch per GPU
                assert steps.warmup == LR_WARMUP_TOKENS[size]
                start = MICRO_BATCH[size] * 4
                assert args.data.rampup_batch_size_tokens == [start, start, BATCH_WARMUP_TOKENS[size]]
            else:  # 1-sqrt over the whole phase, no warm-up
                assert steps == ScheduleSteps(warmup=0, decay=length, wsd_decay=length)
                assert args.data.rampup_batch_size_tokens is None
    for direction in ("decoder-to-encoder", "encoder-to-decoder"):  # 3B warm-up, linear over the last 10B
        args, steps = run(f"cross/{direction}/{size}.yaml", "--load", "decay-phase-checkpoint")
        assert args.run.train_tokens == 50_000_000_000
        assert steps == ScheduleSteps(warmup=3_000_000_000, decay=50_000_000_000, wsd_decay=10_000_000_000)


# Ettin's optimizer numbers, written here from shared/ettin-recipe.md (its released configs): peak LR and
# weight decay per size, and the cross-objective pairs.
PEAK_LR_WD = {"17m": (3e-3, 3e-4), "32m": (3e-3, 3e-4), "68m": (3e-3, 3e-4), "150m": (8e-4, 1e-5),
              "400m": (5e-4, 1e-5), "1b": (5e-4, 5e-5)}
CROSS_LR_WD = {"17m": (1.5e-3, 3e-4), "32m": (1.5e-3, 3e-4), "68m": (1.5e-3, 3e-4), "150m": (4e-4, 1e-5),
               "400m": (2.5e-4, 1e-5), "1b": (2.5e-4, 5e-5)}


@pytest.mark.parametrize("size", list(PEAK_LR_WD))
def test_recipes_train_with_ettins_optimizer(size):
    """StableAdamW, Ettin's weight decay fully decoupled (max_lr: the phase's --lr, as optimi's default
    takes the optimizer's lr in each of Ettin's phase configs), no gradient clipping, betas 0.9 / 0.98,
    eps 1e-6; the weight decay the optimizer gets is Ettin's number as it is."""
    from ettin_megatron.training.optimizer import clip_grad, weight_decay

    peak, wd = PEAK_LR_WD[size]
    names = {f"{kind}/{size}/phase{phase}.yaml": (peak * start, wd)
             for kind in ("encoder", "decoder") for phase, start in ((1, 1.0), (2, 1.0), (3, 0.5))}
    names.update({f"cross/{direction}/{size}.yaml": CROSS_LR_WD[size]
                  for direction in ("decoder-to-encoder", "encoder-to-decoder")})
    for name, (lr, decay) in names.items():
        args = parse_args(["--recipe", str(RECIPES / name)])
        o = args.optim
        assert (o.optimizer, o.fully_decoupled_weight_decay, clip_grad(args)) == ("stableadamw", True, 0.0), name
        assert (o.lr, o.weight_decay, weight_decay(args)) == (pytest.approx(lr), decay, decay), name
        assert (o.adam_beta1, o.adam_beta2, o.adam_eps) == (0.9, 0.98, 1e-6), name


def test_adams_fully_decoupled_decay_is_scaled_to_adamws_rule():
    """AdamW decays by lr x wd: Ettin's rule, wd x lr / max_lr, is AdamW's with wd / max_lr."""
    from ettin_megatron.training.optimizer import clip_grad, weight_decay

    args = parse_args(["--lr", "8e-4", "--weight-decay", "1e-5", "--fully-decoupled-weight-decay"])
    assert weight_decay(args) == pytest.approx(1e-5 / 8e-4) and clip_grad(args) == 1.0
    args = parse_args(["--lr", "8e-4", "--weight-decay", "1e-5", "--optimizer", "stableadamw"])
    assert weight_decay(args) == 1e-5 and clip_grad(args) == 0.0


@pytest.mark.parametrize("flag", ["--save", "--tensorboard-dir", "--wandb-save-dir", "--data-cache-path"])
def test_every_directory_the_run_writes_is_checked_before_training(capsys, prefix, unwritable, flag):
    """Issue 27, item 1: an unwritable --save was found at the first save, after the compute."""
    location, refused = unwritable
    argv = ["--data-path", prefix, "--train-iters", "5", flag, location]
    if flag == "--wandb-save-dir":
        argv += ["--wandb-project", "ettin-test"]
    error = pretrain_error(capsys, argv)
    assert error.startswith(f"error: {flag}: cannot write in {refused} (") and error.endswith("; choose a writable location")


def test_help_opens_with_a_one_line_usage(capsys):
    """Issue 27, item 11: --help opened with argparse's 84-line list of every flag."""
    from ettin_megatron.pretrain import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.split("\n\n")[0].count("\n") == 0, out[:2000]
    assert "--micro-batch-size" in out  # the flags are all still listed, by group
