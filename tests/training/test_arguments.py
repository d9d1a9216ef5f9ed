"""Bad configurations stop before any compute with one clear line; flags, recipes and inheritance.

``python -m ettin_megatron.pretrain`` (here: its ``main``, in-process) returns status 2 and prints one
``error: ...`` line; nothing is initialized (no process group), so these cases cost milliseconds.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from ettin_megatron.pretrain import main
from ettin_megatron.training.arguments import parse_args, read_recipe
from tests.training.training_data import write_corpus

RECIPES = Path("examples/recipes")


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("data"), num_docs=20)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert not torch.distributed.is_initialized()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--global-batch-size", "10", "--micro-batch-size", "4"], "not divisible by micro batch size 4"),
    (["--seq-length", "9000"], "exceeds the model's position limit 8192"),
    (["--train-samples", "40", "--train-iters", "5"], "exactly one of --train-iters and --train-samples"),
    (["--rampup-batch-size", "6", "8", "100"], "must be multiples of micro batch x DP"),
    (["--finetune"], "--finetune needs --load"),
])
def test_bad_configs_fail_in_one_line(capsys, prefix, argv, message):
    base = ["--data-path", prefix, "--train-iters", "5"]
    if "--train-samples" in argv:
        base = base[:2]
    line = _error(capsys, base + argv)
    assert message in line


def test_missing_data(capsys, tmp_path):
    assert "no training data" in _error(capsys, ["--train-iters", "5"])
    assert "no dataset at" in _error(capsys, ["--train-iters", "5", "--data-path", str(tmp_path / "nope")])


def test_unknown_recipe_and_unknown_recipe_key(capsys, tmp_path):
    assert "does not exist" in _error(capsys, ["--recipe", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    assert "unknown argument 'learning_rate'" in _error(capsys, ["--recipe", str(bad)])


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
        if name != "common.yaml":
            args = parse_args(["--recipe", str(RECIPES / name)])
            assert args.data.global_batch_size == 4608 and args.run.seed == 21
    decoder = read_recipe(RECIPES / "decoder/150m/phase2.yaml")
    assert decoder["objective"] == "clm" and decoder["lr"] == 8e-4 and decoder["min_lr"] == 4e-4
