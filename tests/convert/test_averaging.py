"""Acceptance of checkpoint averaging (tools/average_checkpoints.py): the average is, tensor by tensor,
the weighted mean of the sources' Hugging Face exports (computed here from their safetensors files),
whatever TP / PP each source was saved at; it is a weights-only checkpoint that --finetune starts from,
a plain resume refuses and megatron-to-hf --verify exports; bad input is refused in one line.

The sources are the checkpoints of one tiny training run (``python -m ettin_megatron.pretrain``, steps
2, 4 and 6), and copies of two of them re-saved unchanged by a model at TP=2 and at PP=2 on two gloo
ranks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ettin_megatron.checkpoint import read_checkpoint_config
from tests.ranks import run_ranks
from tests.training.cli import REPO, flags
from tests.training.training_data import base_args, write_corpus
from tools.average_checkpoints import main
from tools.convert_checkpoint import main as convert

from .helpers import safetensors_dict

WORLD_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
LAYOUTS = {"tp2": dict(tensor_parallel=2), "pp2": dict(pipeline_parallel=2)}


def pretrain(*argv) -> subprocess.CompletedProcess:
    """``python -m ettin_megatron.pretrain ARGV`` in its own process and world (this one holds a gloo world of
    one, whose rendezvous variables it must not inherit)."""
    env = {name: value for name, value in os.environ.items() if name not in WORLD_VARIABLES}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "ettin_megatron.pretrain", *argv], env=env, capture_output=True,
                          text=True, timeout=600)


def resave_at_layouts(rank, jobs):
    """On each of two ranks: load each source checkpoint into the model of a TP=2 or PP=2 layout and save
    it again from there, unchanged (as a run at that layout would have saved the same weights)."""
    from megatron.core import parallel_state

    from ettin_megatron.checkpoint import load_checkpoint, save_checkpoint
    from ettin_megatron.config import ettin_config
    from ettin_megatron.model import EttinModel
    from ettin_megatron.runtime import ParallelLayout, initialize

    for source, layout, target in jobs:
        initialize(ParallelLayout(**layout), seed=0)
        description = read_checkpoint_config(source)
        config = ettin_config(None, **description["model"],
                              tensor_model_parallel_size=layout.get("tensor_parallel", 1),
                              pipeline_model_parallel_size=layout.get("pipeline_parallel", 1))
        model = EttinModel(config, spec="local", pre_process=parallel_state.is_pipeline_first_stage(),
                           post_process=parallel_state.is_pipeline_last_stage())
        load_checkpoint(source, [model])
        save_checkpoint(target, description["iteration"], [model], config, tokenizer=description["tokenizer"],
                        training_objective=description["training_objective"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """{"prefix", "run", "iters": [iter_2, iter_4, iter_6], "tp2": copy of iter_4, "pp2": copy of iter_6}."""
    root = tmp_path_factory.mktemp("averaging")
    prefix = write_corpus(root, num_docs=200)
    argv = flags(**base_args(prefix, train_iters=6, save_interval=2, save=str(root / "run"), bf16=False,
                             num_workers=0))
    done = pretrain(*argv)
    assert done.returncode == 0, done.stderr
    iters = [root / "run" / f"iter_{step:07d}" for step in (2, 4, 6)]
    copies = {"tp2": (iters[1], root / "tp2"), "pp2": (iters[2], root / "pp2")}
    run_ranks(2, resave_at_layouts, [(str(s), LAYOUTS[name], str(t)) for name, (s, t) in copies.items()],
              timeout=600)
    return {"prefix": prefix, "run": root / "run", "iters": iters, **{name: t for name, (_, t) in copies.items()}}


def average(capsys, *argv) -> str:
    """Run the tool, which must succeed; its one output line."""
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1, out
    return out


def export(capsys, checkpoint, output, *extra) -> dict:
    """megatron-to-hf of ``checkpoint`` through its command line; the exported tensors."""
    code = convert(["megatron-to-hf", "--load", str(checkpoint), "--output", str(output), *extra])
    assert code == 0, capsys.readouterr().err
    return safetensors_dict(Path(output) / "model.safetensors")


def weighted_sum(exports: list[dict], weights: list[float]) -> dict:
    """sum_i weights[i] * exports[i], tensor by tensor, in float64 (the independent reference)."""
    return {name: sum(w * e[name].double() for w, e in zip(weights, exports)) for name in exports[0]}


def test_uniform_average_is_the_mean_of_the_exports(capsys, run, tmp_path):
    a, b = run["iters"][:2]
    line = average(capsys, "--load", a, b, "--save", tmp_path / "avg")
    assert "model weights only, the optimizer state is not carried" in line
    assert f"--load {tmp_path / 'avg'} --finetune" in line
    sources = [export(capsys, c, tmp_path / f"hf{i}") for i, c in enumerate((a, b))]
    averaged = export(capsys, tmp_path / "avg", tmp_path / "hf_avg")
    assert set(averaged) == set(sources[0])
    for name, tensor in averaged.items():
        assert not torch.equal(sources[0][name], sources[1][name]), name  # trained apart: a real mean
        # 0.5 a + 0.5 b rounds once in float32, as (a + b) / 2 does: the same float, bit for bit
        assert torch.equal(tensor, (sources[0][name] + sources[1][name]) / 2), name

    description = read_checkpoint_config(tmp_path / "avg")
    source = read_checkpoint_config(b)
    assert description["model"] == source["model"]
    assert (description["tokenizer"], description["training_objective"]) == (source["tokenizer"], "mlm")
    assert description["iteration"] == 4 and description["weighting"] == "uniform"
    assert [(e["checkpoint"], e["weight"], e["iteration"]) for e in description["averaged_from"]] == [
        (str(a), 0.5, 2), (str(b), 0.5, 4)]


def test_exponential_weights_to_a_hugging_face_directory(capsys, run, tmp_path):
    line = average(capsys, "--run", run["run"], "--last", 3, "--weights", "exponential", "--decay", 0.5,
                   "--output", tmp_path / "hf_avg")
    assert "weights exponential, decay 0.5" in line and "the optimizer state is not carried" in line
    sources = [export(capsys, c, tmp_path / f"hf{i}") for i, c in enumerate(run["iters"])]
    weights = [0.25 / 1.75, 0.5 / 1.75, 1 / 1.75]  # 0.5 ** (K - 1 - i), normalized: the newest weighs most
    reference = weighted_sum(sources, weights)
    averaged = safetensors_dict(tmp_path / "hf_avg" / "model.safetensors")
    assert set(averaged) == set(reference)
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor.double(), reference[name], rtol=1e-6, atol=1e-7, msg=name)
    record = json.loads((tmp_path / "hf_avg" / "ettin_average.json").read_text())
    assert [e["iteration"] for e in record["averaged_from"]] == [2, 4, 6]
    assert [e["weight"] for e in record["averaged_from"]] == pytest.approx(weights)
    assert not list(tmp_path.glob("hf_avg.*"))  # no staging left behind


def test_explicit_weights(capsys, run, tmp_path):
    a, b = run["iters"][1:]
    average(capsys, "--load", a, b, "--weights", "1", "3", "--save", tmp_path / "avg")
    reference = weighted_sum([export(capsys, c, tmp_path / f"hf{i}") for i, c in enumerate((a, b))], [0.25, 0.75])
    for name, tensor in export(capsys, tmp_path / "avg", tmp_path / "hf_avg").items():
        torch.testing.assert_close(tensor.double(), reference[name], rtol=1e-6, atol=1e-7, msg=name)


def test_same_average_from_checkpoints_saved_at_tp2_and_pp2(capsys, run, tmp_path):
    """{iteration 4 saved at TP=2, iteration 6 saved at PP=2} averages to exactly {4, 6} at TP=1."""
    for name in LAYOUTS:  # written by both ranks: a sharded save, not a copy
        assert list(run[name].glob("iter_*/__1_*.distcp")), name
    average(capsys, "--load", run["tp2"], run["pp2"], "--save", tmp_path / "parallel")
    average(capsys, "--load", *run["iters"][1:], "--save", tmp_path / "single")
    parallel = export(capsys, tmp_path / "parallel", tmp_path / "hf_parallel")
    single = export(capsys, tmp_path / "single", tmp_path / "hf_single")
    assert set(parallel) == set(single)
    for name, tensor in parallel.items():
        assert torch.equal(tensor, single[name]), name


def test_the_average_fine_tunes_and_exports_with_verify(capsys, run, tmp_path):
    average(capsys, "--load", *run["iters"][1:], "--save", tmp_path / "avg")
    code = convert(["megatron-to-hf", "--load", str(tmp_path / "avg"), "--output", str(tmp_path / "hf"), "--verify"])
    out = capsys.readouterr().out
    assert code == 0 and "(ok tolerance" in out, out

    common = base_args(run["prefix"], train_iters=2, bf16=False, num_workers=0, load=str(tmp_path / "avg"))
    resumed = pretrain(*flags(**common))
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'avg' / 'iter_0000006'} holds weights only (no training state); load it with --finetune.")
    tuned = pretrain(*flags(**common, finetune=True, save=str(tmp_path / "tuned")))
    assert tuned.returncode == 0, tuned.stderr
    assert "step       2/2" in tuned.stdout + tuned.stderr
    assert read_checkpoint_config(tmp_path / "tuned")["iteration"] == 2


def expect_error(capsys, fragment, *argv):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert fragment in err, err


def edited_copy(source: Path, target: Path, **changes) -> Path:
    """A copy of checkpoint ``source`` whose ettin_config.json has ``changes`` (``model.x`` for a model field)."""
    shutil.copytree(source, target)
    path = target / "ettin_config.json"
    description = json.loads(path.read_text())
    for key, value in changes.items():
        *parent, leaf = key.split(".")
        (description[parent[0]] if parent else description)[leaf] = value
    path.write_text(json.dumps(description))
    return target


def test_one_line_errors_before_any_work(capsys, run, tmp_path):
    a, b, c = run["iters"]
    out = tmp_path / "out"
    expect_error(capsys, f"{tmp_path / 'nope'} does not exist", "--load", a, tmp_path / "nope", "--save", out)
    expect_error(capsys, "averaging needs at least 2 checkpoints, got 1.", "--load", a, "--save", out)
    expect_error(capsys, "holds 3 complete checkpoint(s), fewer than --last 4.", "--run", run["run"], "--last", 4,
                 "--save", out)
    expect_error(capsys, "--run needs --last K", "--run", run["run"], "--save", out)
    expect_error(capsys, "is not a directory; pass the --save directory of a run", "--run", tmp_path / "nope",
                 "--last", 2, "--save", out)
    expect_error(capsys, "--last counts the checkpoints of --run", "--load", a, b, "--last", 2, "--save", out)
    expect_error(capsys, "is given twice", "--load", run["run"], c, "--save", out)
    rope = edited_copy(b, tmp_path / "rope", **{"model.global_rope_theta": 160000.0})
    expect_error(capsys, f"{rope} is another model than {a} (global_rope_theta 160000.0 vs 10000.0)",
                 "--load", a, rope, "--save", out)
    mntp = edited_copy(b, tmp_path / "mntp", training_objective="mntp")
    expect_error(capsys, "(training_objective mntp vs mlm)", "--load", a, mntp, "--save", out)
    elsewhere = edited_copy(b, tmp_path / "elsewhere", tokenizer="other/tokenizer.json")
    expect_error(capsys, "the checkpoints name different tokenizers", "--load", a, elsewhere, "--save", out)
    untokenized = [edited_copy(c, tmp_path / f"untokenized{i}", tokenizer=None) for i, c in enumerate((a, b))]
    expect_error(capsys, "no tokenizer is known for this checkpoint; pass --tokenizer DIR", "--load", *untokenized,
                 "--output", out)
    expect_error(capsys, "--weights lists 3 numbers for 2 checkpoints", "--load", a, b, "--weights", 1, 2, 3,
                 "--save", out)
    expect_error(capsys, "weights must be >= 0", "--load", a, b, "--weights", 1, -1, "--save", out)
    expect_error(capsys, "positive, finite sum, got 0.0", "--load", a, b, "--weights", 0, 0, "--save", out)
    expect_error(capsys, "--weights takes uniform, exponential or one number", "--load", a, b, "--weights", "ema",
                 "--save", out)
    expect_error(capsys, "--weights exponential needs --decay D", "--load", a, b, "--weights", "exponential",
                 "--save", out)
    expect_error(capsys, "--decay must be in (0, 1], got 2.0", "--load", a, b, "--weights", "exponential",
                 "--decay", 2, "--save", out)
    expect_error(capsys, "one of the arguments --save --output is required", "--load", a, b)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    expect_error(capsys, "exists and is not an empty directory", "--load", a, b, "--save", tmp_path / "full")
    expect_error(capsys, "neither empty nor a Hugging Face model directory", "--load", a, b, "--output",
                 tmp_path / "full")
    assert not out.exists()


def test_an_unwritable_output_is_refused(capsys, run, unwritable):
    location, named = unwritable
    a, b = run["iters"][:2]
    expect_error(capsys, f"--save: cannot write in {named}", "--load", a, b, "--save", Path(location) / "avg")
    expect_error(capsys, f"--output: cannot write in {named}", "--load", a, b, "--output", Path(location) / "hf")
