"""Megatron-LM habits: its flag names are accepted where the meaning is the same, no flag is read as an
abbreviation of another, shape flags override a preset's fields (checked as presets are), and
``--help`` says each default once."""

import re
import subprocess
import sys

import pytest

from ettin_megatron.training.arguments import parse_args
from ettin_megatron.training.plan import model_shape, plan_model, plan_run, schedule_steps
from ettin_megatron.training.setup import build_model_config
from tests.training.training_data import pretrain_error, write_corpus

pytestmark = pytest.mark.timeout(300)  # a check that let a run through would wait for a second rank

TOOLS = ["preprocess_data", "merge_datasets", "inspect_dataset", "convert_checkpoint", "fill_mask",
         "train_tokenizer", "build_sample_corpus", "generate"]


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("data"), num_docs=20)


def test_no_flag_is_an_abbreviation_of_another(capsys):
    """``--num-layers 2`` once meant --num-layers-per-virtual-pipeline-stage 2; now an abbreviation is an
    unknown flag, in pretrain and in every tool."""
    assert pretrain_error(capsys, ["--num-layers-per-virtual", "2"]) == (
        "error: unrecognized arguments: --num-layers-per-virtual 2")
    assert parse_args(["--num-layers", "2"]).parallel.num_layers_per_virtual_pipeline_stage is None
    for tool in TOOLS:
        module = __import__(f"ettin_megatron.commands.{tool}", fromlist=["parser"])
        parser = module.parser()
        assert parser.allow_abbrev is False, tool
        subparsers = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
        for action in subparsers:
            assert all(sub.allow_abbrev is False for sub in action.choices.values()), tool


def test_shape_flags_override_the_preset_and_are_validated(capsys, monkeypatch, prefix):
    args = parse_args(["--model-size", "17m", "--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size",
                       "96", "--num-attention-heads", "4", "--data-path", prefix, "--train-iters", "2"])
    shape = model_shape(args)
    assert (shape.num_layers, shape.hidden_size, shape.ffn_hidden_size, shape.num_attention_heads) == (2, 64, 96, 4)
    config = build_model_config(plan_model(args, vocab_size=128))
    assert (config.num_layers, config.hidden_size, config.ffn_hidden_size, config.num_attention_heads) == (2, 64, 96, 4)
    base = ["--data-path", prefix, "--train-iters", "2", "--global-batch-size", "8"]
    monkeypatch.setenv("WORLD_SIZE", "2")  # read before any process group: the checks run first
    assert "3 attention heads are not divisible by tensor parallel size 2" in pretrain_error(
        capsys, base + ["--num-attention-heads", "3", "--hidden-size", "96", "--tensor-model-parallel-size", "2"])
    assert "hidden size 130 is not divisible by 4 attention heads" in pretrain_error(
        capsys, base + ["--hidden-size", "130", "--num-attention-heads", "4"])
    assert "3 layers cannot be split evenly into PP x VPP = 2" in pretrain_error(
        capsys, base + ["--num-layers", "3", "--pipeline-model-parallel-size", "2"])


def test_megatron_aliases(capsys, prefix):
    args = parse_args(["--mask-prob", "0.15", "--tokenizer-type", "HuggingFaceTokenizer"])
    assert args.data.mask_rate == 0.15
    assert "error: --tokenizer-type: invalid choice: 'GPT2BPETokenizer'" in pretrain_error(
        capsys, ["--tokenizer-type", "GPT2BPETokenizer"])
    assert "--fp16 is not supported" in pretrain_error(capsys, ["--data-path", prefix, "--train-iters", "2", "--fp16"])


def test_lr_warmup_fraction_is_a_fraction_of_the_decay(capsys, tmp_path, prefix):
    """Megatron-LM: warmup = fraction x decay length; it replaces a recipe's warmup in any form."""
    (tmp_path / "r.yaml").write_text("lr_warmup_samples: 64\ntrain_iters: 100\nglobal_batch_size: 8\n"
                                     "micro_batch_size: 8\n")
    args = parse_args(["--recipe", str(tmp_path / "r.yaml"), "--lr-warmup-fraction", "0.1", "--data-path", prefix])
    plan_run(args, world_size=1)
    assert schedule_steps(args).warmup == 80  # 0.1 x 100 steps x 8 samples
    assert "not both" in pretrain_error(capsys, ["--data-path", prefix, "--train-iters", "2",
                                                 "--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "1"])


def test_help_says_each_default_once():
    text = subprocess.run([sys.executable, "-m", "ettin_megatron.pretrain", "--help"], capture_output=True,
                          text=True, check=True).stdout
    entries = re.split(r"\n  --", text)
    twice = [entry.split()[0] for entry in entries if len(re.findall(r"default", entry, re.I)) > 1]
    assert not twice, twice
    assert "--override-opt_param-scheduler" in text and "--mask-prob" in text
