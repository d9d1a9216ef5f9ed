"""tools/export_run.py on a tiny run with 4 checkpoints (8 iterations, one save every 2), trained once in a
subprocess as users launch it.

Every checkpoint becomes a folder named as Ettin's revisions whose weights and transformers logits equal,
bit for bit, ``convert_checkpoint.py megatron-to-hf`` of that iteration, with the step, samples and tokens
that the training log printed beside it. A rerun skips complete folders; an export killed with SIGKILL
(or one that left a staging directory or a folder without its record) is redone; --watch exports a
checkpoint saved while it runs and stops on SIGTERM, at an iteration or when idle. Bad arguments are
refused in one line before anything is written.
"""

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ettin_megatron.convert.export_run import CHECKPOINT_RECORD
from tools.convert_checkpoint import main as convert
from tools.export_run import main

from ..training.cli import flags
from ..training.training_data import CLS, PAD, SEP, base_args, write_corpus
from .helpers import safetensors_dict

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
STEPS = (2, 4, 6, 8)
GLOBAL_BATCH = 8
NAMES = [f"step{n}" for n in STEPS]


def tool(*argv) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "export_run.py"), *map(str, argv)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run directory, {step: input tokens consumed up to it, as the training log prints them})."""
    root = tmp_path_factory.mktemp("run")
    argv = flags(**base_args(write_corpus(root), train_iters=8, save_interval=2, save=str(root / "run"),
                             global_batch_size=GLOBAL_BATCH))
    done = subprocess.run([sys.executable, "-m", "ettin_megatron.pretrain", *argv], env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    tokens = {int(step): int(count.replace(",", "")) for step, count in
              re.findall(r"step\s+(\d+)/8 \|.*?\| tokens ([\d,]+) \|", done.stdout)}
    assert sorted(tokens) == list(range(1, 9)), done.stdout
    return root / "run", tokens


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """(output directory, stdout) of ``python tools/export_run.py`` on the whole run."""
    out = tmp_path_factory.mktemp("export") / "hf"
    done = subprocess.run(tool("--load", run[0], "--output", out), env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def hf_logits(folder) -> torch.Tensor:
    """transformers' own reading of an exported folder (ModernBertForMaskedLM) on two documents of the
    training corpus's kind, one right-padded."""
    from transformers import AutoModelForMaskedLM

    rows = [[CLS, 3, 17, 3, 17, 3, 17, 3, SEP], [CLS, 40, 8, 22, 40, 8, SEP, PAD, PAD]]
    ids = torch.tensor(rows)
    model = AutoModelForMaskedLM.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
    with torch.no_grad():
        return model.eval()(input_ids=ids, attention_mask=(ids != PAD).long()).logits


def same_weights(a, b) -> bool:
    x, y = safetensors_dict(Path(a) / "model.safetensors"), safetensors_dict(Path(b) / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[name], y[name]) for name in x)


def files_and_times(folder) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in Path(folder).rglob("*") if p.is_file()}


def record(folder) -> dict:
    return json.loads((Path(folder) / CHECKPOINT_RECORD).read_text())


def test_every_checkpoint_becomes_a_folder_equal_to_its_single_export(run, exported, tmp_path):
    run_dir, tokens = run
    out, stdout = exported
    assert sorted(os.listdir(out), key=lambda name: int(name[4:])) == NAMES  # and nothing half-written
    assert [line.split(":")[0] for line in stdout.splitlines() if line.startswith("exported ")] == \
        [f"exported {name}" for name in NAMES]
    logits = {}
    for step, name in zip(STEPS, NAMES):
        single = tmp_path / name
        assert convert(["megatron-to-hf", "--load", str(run_dir / f"iter_{step:07d}"), "--output", str(single)]) == 0
        assert same_weights(out / name, single)
        assert json.loads((out / name / "config.json").read_text()) == json.loads((single / "config.json").read_text())
        logits[step] = hf_logits(out / name)
        assert torch.equal(logits[step], hf_logits(single))
        assert record(out / name) == {"name": name, "phase_tag": "step", "iteration": step,
                                      "consumed_samples": step * GLOBAL_BATCH, "consumed_tokens": tokens[step],
                                      "source": str((run_dir / f"iter_{step:07d}").resolve())}
        assert f"exported {name}: iteration {step}, {tokens[step]:,} tokens" in stdout
    assert not torch.equal(logits[2], logits[8])  # the checkpoints differ: the comparisons above say something


def test_a_rerun_skips_complete_folders(capsys, run, exported):
    out, _ = exported
    before = {name: files_and_times(out / name) for name in NAMES}
    assert main(["--load", str(run[0]), "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [f"skipped {name}: already exported" for name in NAMES]
    assert lines[4].startswith("done: 0 exported, 4 skipped")
    assert {name: files_and_times(out / name) for name in NAMES} == before  # nothing rewritten


def test_a_killed_export_leaves_no_half_folder_after_a_rerun(capsys, run, exported, tmp_path):
    out = tmp_path / "hf"
    job = subprocess.Popen(tool("--load", run[0], "--output", out), env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    staging = out / "step2.tmp"
    deadline = time.monotonic() + 300
    while not staging.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert staging.is_dir() and not (out / "step2").exists()  # killed mid-export: a half folder
    assert main(["--load", str(run[0]), "--output", str(out)]) == 0
    assert "done: 4 exported, 0 skipped" in capsys.readouterr().out
    assert sorted(os.listdir(out), key=lambda name: int(name[4:])) == NAMES
    assert all(same_weights(out / name, exported[0] / name) and record(out / name) == record(exported[0] / name)
               for name in NAMES)


def test_folders_without_their_record_are_redone(capsys, run, exported, tmp_path):
    """Killed after the rename but before the record (step4), or with only a staging directory left
    (step6): both are redone, the complete ones skipped."""
    out = tmp_path / "hf"
    shutil.copytree(exported[0], out)
    (out / "step4" / CHECKPOINT_RECORD).unlink()
    (out / "step4" / "model.safetensors").write_bytes(b"cut short")
    shutil.rmtree(out / "step6")
    (out / "step6.tmp").mkdir()
    (out / "step6.tmp" / "config.json").write_text("{")
    assert main(["--load", str(run[0]), "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["skipped step2", "exported step4", "exported step6",
                                                          "skipped step8"]
    assert sorted(os.listdir(out), key=lambda name: int(name[4:])) == NAMES
    assert all(same_weights(out / name, exported[0] / name) for name in NAMES)


class Lines:
    """The stdout lines of a running process, read by a thread so that a test can wait with a timeout."""

    def __init__(self, process: subprocess.Popen):
        self.queue, self.seen = queue.Queue(), []
        threading.Thread(target=lambda: [self.queue.put(line.rstrip("\n")) for line in process.stdout],
                         daemon=True).start()

    def wait_for(self, prefix: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.queue.get(timeout=max(deadline - time.monotonic(), 0.001))
            self.seen.append(line)
            if line.startswith(prefix):
                return line


def test_watch_exports_a_checkpoint_saved_while_it_runs(run, exported, tmp_path):
    """The watched run starts with iteration 2; iteration 4 arrives as a save does (written as
    iter_N.tmp, renamed, then the latest marker), with iteration 6 still being written beside it."""
    run_dir, watched, out = run[0], tmp_path / "run", tmp_path / "hf"
    watched.mkdir()
    shutil.copytree(run_dir / "iter_0000002", watched / "iter_0000002")
    (watched / "latest_checkpointed_iteration.txt").write_text("2\n")
    job = subprocess.Popen(tool("--load", watched, "--output", out, "--watch", "--poll-seconds", 0.2), env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = Lines(job)
        assert lines.wait_for("exported ").startswith("exported step2:")
        shutil.copytree(run_dir / "iter_0000006", watched / "iter_0000006.tmp")  # a save in progress
        shutil.copytree(run_dir / "iter_0000004", watched / "iter_0000004.tmp")
        os.replace(watched / "iter_0000004.tmp", watched / "iter_0000004")
        (watched / "latest_checkpointed_iteration.txt").write_text("4\n")
        assert lines.wait_for("exported ").startswith("exported step4:")
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=120) == 0, job.stderr.read()[-3000:]
        assert lines.wait_for("stopped") == "stopped on SIGTERM: 2 exported, 0 skipped; a rerun continues from there"
    finally:
        job.kill()
    assert sorted(os.listdir(out)) == ["step2", "step4"]
    assert all(same_weights(out / name, exported[0] / name) for name in ("step2", "step4"))
    assert record(out / "step4")["source"] == str((watched / "iter_0000004").resolve())


def test_ctrl_c_stops_a_watch_in_one_line(run, exported):
    """SIGINT as a terminal sends it (the default handler restored: a background pytest ignores it)."""
    job = subprocess.Popen(tool("--load", run[0], "--output", exported[0], "--watch", "--poll-seconds", 0.2),
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        Lines(job).wait_for("skipped step8")
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=120) == 130
        err = job.stderr.read().strip()
        assert err.splitlines() == ["error: interrupted after 0 exported; the folder in progress was discarded, "
                                    "a rerun exports it."], err
    finally:
        job.kill()


@pytest.mark.parametrize("limit, handled, ended_by", [
    (["--stop-after-iteration", "3"], NAMES[:2], "iteration 3 reached"),
    (["--idle-timeout", "0.5"], NAMES, "no new checkpoint for 0.5 s"),
])
def test_watch_stops_at_an_iteration_or_when_idle(capsys, run, exported, limit, handled, ended_by):
    start = time.monotonic()
    assert main(["--load", str(run[0]), "--output", str(exported[0]), "--watch", "--poll-seconds", "0.1", *limit]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"skipped {name}: already exported" for name in handled] + [
        f"done: 0 exported, {len(handled)} skipped ({ended_by}) in {exported[0]}"]
    assert time.monotonic() - start < 60


def test_a_phase_that_restarts_its_steps_needs_its_own_tag(capsys, run, exported, tmp_path):
    """A next phase (--finetune counts from 0 again) exported into the same output: under the default tag
    its step2 would collide with the previous phase's, so it is refused; as ext it sits beside it."""
    out, phase2 = tmp_path / "hf", tmp_path / "phase2"
    shutil.copytree(exported[0], out)
    phase2.mkdir()
    shutil.copytree(run[0] / "iter_0000002", phase2 / "iter_0000002")
    assert main(["--load", str(phase2), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs its own --phase-tag" in err, err
    assert main(["--load", str(phase2), "--output", str(out), "--phase-tag", "ext"]) == 0
    assert sorted(os.listdir(out)) == sorted(NAMES + ["ext2"])
    assert record(out / "ext2")["phase_tag"] == "ext" and same_weights(out / "ext2", out / "step2")


@pytest.mark.parametrize("case, message", [
    ("missing load", "is not a directory"),
    ("one checkpoint", "is one checkpoint, not a run"),
    ("empty run", "holds no complete checkpoint"),
    ("unknown tag", "unknown phase tag 'warmup'"),
    ("watch flag alone", "--poll-seconds only apply with --watch"),
    ("zero poll", "must be a positive number"),
    ("output is a file", "is a file"),
])
def test_bad_arguments_are_refused_in_one_line(capsys, run, tmp_path, case, message):
    run_dir, out = run[0], tmp_path / "out"
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    argv = {"missing load": ["--load", str(tmp_path / "nothing"), "--output", str(out)],
            "one checkpoint": ["--load", str(run_dir / "iter_0000002"), "--output", str(out)],
            "empty run": ["--load", str(tmp_path / "empty"), "--output", str(out)],
            "unknown tag": ["--load", str(run_dir), "--output", str(out), "--phase-tag", "warmup"],
            "watch flag alone": ["--load", str(run_dir), "--output", str(out), "--poll-seconds", "1"],
            "zero poll": ["--load", str(run_dir), "--output", str(out), "--watch", "--poll-seconds", "0"],
            "output is a file": ["--load", str(run_dir), "--output", str(tmp_path / "file")]}[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists()


def test_an_unwritable_output_is_refused_in_one_line(capsys, run, unwritable):
    output, named = unwritable
    assert main(["--load", str(run[0]), "--output", output]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: --output: cannot write in {named}"), err
