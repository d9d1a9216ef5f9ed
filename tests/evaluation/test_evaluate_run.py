"""tools/evaluate_run.py on real runs: its held-out loss of every checkpoint is the validation loss pretrain
logged for it (MLM and CLM), every checkpoint is scored on the same masks, the table and the plot are
written (an averaged checkpoint placed and marked), and user errors are one line before any work.

The runs are pretrain's command line (``python -m ettin_megatron.pretrain``) with validation at every save;
its validation losses are read from its stdout (4 decimals) and from its TensorBoard events (float32,
through TensorBoard's own EventAccumulator), independently of the tool.
"""

import csv
import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.training.cli import REPO, flags
from tests.training.training_data import base_args, write_corpus

STEPS, INTERVAL = 6, 2
HELDOUT = dict(split="90,10,0", seq_length=32, micro_batch_size=2, global_batch_size=8, eval_iters=2, seed=21)
"""The run's data flags that define its validation set, passed alike to pretrain and to the tool."""


def _pretrain(tmp_path, name, **overrides):
    """A run of STEPS steps saving and validating every INTERVAL: (its --save, {step: (loss, tokens) as
    logged on stdout}, {step: loss in its TensorBoard events})."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prefix = write_corpus(tmp_path)
    values = base_args(prefix, train_iters=STEPS, save=str(tmp_path / name), save_interval=INTERVAL,
                       eval_interval=INTERVAL, tensorboard_dir=str(tmp_path / f"{name}-tb"), num_workers=0,
                       **{**HELDOUT, **overrides})
    done = subprocess.run([sys.executable, "-m", "ettin_megatron.pretrain", *flags(**values)], cwd=REPO,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                               "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    logged = {int(step): (float(loss), int(tokens.replace(",", ""))) for step, loss, tokens in re.findall(
        r"validation step (\d+) \| \w+ loss (\S+) \|.*\| tokens ([\d,]+)", done.stdout)}
    events = EventAccumulator(str(tmp_path / f"{name}-tb"))
    events.Reload()
    stored = {event.step: event.value for event in events.Scalars("valid/loss")}
    assert sorted(logged) == sorted(stored) == list(range(INTERVAL, STEPS + 1, INTERVAL))
    return tmp_path / name, prefix, logged, stored


def evaluate(*argv) -> subprocess.CompletedProcess:
    """``python tools/evaluate_run.py ARGV`` (a process of its own: it makes a gloo world of one)."""
    done = subprocess.run([sys.executable, "tools/evaluate_run.py", *argv], cwd=REPO, capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def heldout_flags(prefix, **overrides) -> list[str]:
    return flags(data_path=[prefix], num_workers=0, **{**HELDOUT, **overrides})


def table(output) -> list[dict]:
    with open(output / "heldout.csv") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    return _pretrain(tmp_path_factory.mktemp("mlm"), "run")


@pytest.mark.timeout(600)
def test_each_checkpoint_scores_the_validation_loss_pretrain_logged(mlm_run, tmp_path):
    root, prefix, logged, stored = mlm_run
    averaging = subprocess.run([sys.executable, "tools/average_checkpoints.py", "--load", str(root / "iter_0000004"),
                                str(root / "iter_0000006"), "--save", str(tmp_path / "averaged")], cwd=REPO,
                               capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert averaging.returncode == 0, averaging.stderr[-3000:]
    output = tmp_path / "eval"
    done = evaluate("--load", str(root), str(tmp_path / "averaged"), "--output", str(output),
                    "--sanity-text", "t1 t2 [MASK] t1", *heldout_flags(prefix))

    rows = table(output)
    trained, (averaged,) = rows[:-1], rows[-1:]
    assert [row["name"] for row in trained] == [f"run/iter_{step:07d}" for step in sorted(logged)]
    for row in trained:
        step = int(row["iteration"])
        loss, tokens = logged[step]
        assert abs(float(row["loss"]) - loss) <= 0.5e-4  # the log's 4 decimals
        assert float(row["loss"]) == pytest.approx(stored[step], rel=2e-6)  # TensorBoard's float32
        assert int(row["labelled_tokens"]) == tokens
        assert row["averaged"] == "0" and "t1 t2 [MASK] t1 -> '" in row["sanity"]
    # The final checkpoint, to float32 precision: the acceptance of issue 28.
    assert float(trained[-1]["loss"]) == pytest.approx(stored[STEPS], rel=2e-6)
    # Tokens consumed: those the checkpoints recorded (the loss falls along them).
    from ettin_megatron.checkpoint import training_position

    for row in trained:
        assert int(row["consumed_tokens"]) == training_position(row["directory"])["consumed_tokens"]
    # Every checkpoint, the average too, saw the same masks.
    assert len({(row["masks"], row["labelled_tokens"]) for row in rows}) == 1
    # The average: flagged, placed at its last source's tokens, scored on its own weights.
    assert averaged["averaged"] == "1" and averaged["name"] == f"averaged/iter_{STEPS:07d}"
    assert averaged["consumed_tokens"] == trained[-1]["consumed_tokens"]
    assert averaged["loss"] not in (trained[-1]["loss"], trained[-2]["loss"])
    assert "(averaged)" in done.stdout
    png = (output / "heldout.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert sorted(p.name for p in output.iterdir()) == ["heldout.csv", "heldout.png"]  # no temp left


@pytest.mark.timeout(600)
def test_the_masks_are_drawn_from_the_seed(mlm_run, tmp_path):
    """The same --seed is the same held-out set, another --seed another one (its masks, and here its
    samples' order too): a digest that did not follow the data would pass the test above whatever the masks."""
    root, prefix, _, stored = mlm_run
    rows = {}
    for seed in (21, 22):
        evaluate("--load", str(root / "iter_0000006"), "--output", str(tmp_path / str(seed)), "--no-sanity",
                 *heldout_flags(prefix, seed=seed))
        (rows[seed],) = table(tmp_path / str(seed))
    assert float(rows[21]["loss"]) == pytest.approx(stored[STEPS], rel=2e-6) and rows[21]["sanity"] == ""
    assert rows[21]["masks"] != rows[22]["masks"] and rows[21]["loss"] != rows[22]["loss"]


@pytest.mark.timeout(600)
def test_a_decoder_scores_the_clm_loss_pretrain_logged(tmp_path):
    root, prefix, logged, stored = _pretrain(tmp_path, "clm", objective="clm", data_layout="concat")
    output = tmp_path / "eval"
    # Another micro-batch size reads the same samples in other packs: the loss is the same.
    evaluate("--load", str(root), "--output", str(output), "--sanity-text", "t1 t2",
             *heldout_flags(prefix, data_layout="concat", micro_batch_size=4))
    rows = table(output)
    assert [int(row["iteration"]) for row in rows] == sorted(logged)
    for row in rows:
        step = int(row["iteration"])
        assert float(row["loss"]) == pytest.approx(stored[step], rel=1e-5)
        assert int(row["labelled_tokens"]) == logged[step][1]
        assert row["sanity"].startswith("t1 t2 -> 't")  # the continuation, quoted: one line whatever it holds


def _error(capsys, argv) -> str:
    import torch

    from ettin_megatron.commands.evaluate_run import main
    from ettin_megatron.runtime import destroy

    destroy()  # the world an earlier in-process conversion left: this command must make none
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    assert not torch.distributed.is_initialized()  # refused before any model was loaded
    return err


def test_user_errors_are_one_line_before_any_work(capsys, tmp_path, mlm_run, tokenizer_dir):
    from tests.training.test_data_agreement import preprocessed

    root, prefix, _, _ = mlm_run
    out = str(tmp_path / "out")
    common = ["--output", out, *heldout_flags(prefix)]
    (tmp_path / "empty").mkdir()
    assert "holds no checkpoint" in _error(capsys, ["--load", str(tmp_path / "empty"), *common])
    assert "does not exist" in _error(capsys, ["--load", str(tmp_path / "nothing"), *common])
    bad_prefix = ["--load", str(root), "--output", out, "--data-path", str(tmp_path / "missing")]
    assert f"no dataset at {tmp_path / 'missing'}" in _error(capsys, bad_prefix)
    assert "for validation" in _error(capsys, ["--load", str(root), *common, "--split", "100,0,0"])
    assert "--eval-iters 0 leaves nothing" in _error(capsys, ["--load", str(root), *common, "--eval-iters", "0"])
    # Data made with another tokenizer than the checkpoint's.
    other_data = preprocessed(tmp_path, tokenizer_dir)
    line = _error(capsys, ["--load", str(root), "--output", out, "--data-path", other_data, "--split", "0,1,0"])
    assert f"{other_data} was made with another tokenizer" in line
    # A --tokenizer-model other than the one the checkpoint was trained with.
    line = _error(capsys, ["--load", str(root), *common, "--tokenizer-model", tokenizer_dir])
    assert "is not the tokenizer run/iter_0000002 was trained with" in line
    assert "is a bidirectional model, which --objective clm does not train" in _error(
        capsys, ["--load", str(root), *common, "--objective", "clm"])
    # A checkpoint whose recorded tokenizer is gone.
    moved = tmp_path / "moved" / "iter_0000002"
    shutil.copytree(root / "iter_0000002", moved)
    description = json.loads((moved / "ettin_config.json").read_text())
    (moved / "ettin_config.json").write_text(json.dumps({**description, "tokenizer": "/gone/tokenizer.json"}))
    line = _error(capsys, ["--load", str(moved), *common])
    assert "moved/iter_0000002 was trained with the tokenizer /gone/tokenizer.json, which is not there" in line
    assert not (tmp_path / "out").exists()
