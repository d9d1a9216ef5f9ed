"""Runs that stop early: a non-finite loss stops the run with one line and nothing saved; a signal or
the time limit finishes the step on every rank, saves, exits 0, and the relaunch ends where an
uninterrupted run ends (bit-exact weights, the same logged losses)."""

import os
import re
import signal
import subprocess
import sys

import psutil
import pytest
import torch

from ettin_megatron.checkpoint import latest_iteration
from ettin_megatron.runtime.distributed import free_port
from tests.ranks import run_ranks
from tests.training.cli import REPO, finished, flags, step_lines, torchrun
from tests.training.training_data import base_args, write_corpus


def _cli(rank, argv):
    """ettin_megatron.pretrain.main in this process: (exit status, stderr, stdout)."""
    import contextlib
    import io

    from ettin_megatron.pretrain import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(argv)
    return status, err.getvalue(), out.getvalue()


@pytest.mark.timeout(900)
def test_non_finite_loss_stops_before_the_step_with_one_line(tmp_path):
    """--lr 1e4 (the issue's example): the loss turns NaN within a few steps, saved every step."""
    prefix, root = write_corpus(tmp_path), tmp_path / "ckpt"
    argv = flags(**base_args(prefix, lr=1e4, train_iters=10))
    ((status, err, out),) = run_ranks(1, _cli, argv + ["--save", str(root), "--save-interval", "1"], timeout=600)
    assert status != 0, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: non-finite loss nan at step "), err
    step = int(re.search(r"at step (\d+),", lines[0]).group(1))
    samples = re.search(r"training samples (\d+)-(\d+) \(the first is \S+/docs sample \d+\)", lines[0])
    first, last = map(int, samples.groups())
    assert 8 * (step - 1) <= first and last == first + 1 < 8 * step  # in the step's batch of 8, micro-batch 2
    assert 1 < step < 10 and latest_iteration(root) == step - 1, (step, sorted(os.listdir(root)))
    assert not (root / f"iter_{step:07d}").exists()
    # Without the guard the run trains on, on NaN.
    ((status, err, out),) = run_ranks(1, _cli, argv + ["--no-check-for-nan-in-loss-and-grad", "--train-iters",
                                                       str(step + 1)], timeout=600)
    assert status == 0 and "loss nan" in out


def _weights(rank, directories):
    """The weights of each checkpoint, loaded at TP=1 (bit-exact comparison)."""
    from ettin_megatron.checkpoint import load_checkpoint
    from ettin_megatron.runtime import ParallelLayout, initialize
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.plan import plan_model
    from ettin_megatron.training.setup import build_model, build_model_config, unwrap

    args = make_arguments(model_size="tiny", vocab_size=1024, spec="local")
    initialize(ParallelLayout())
    weights = []
    for directory in directories:
        (model,) = unwrap(build_model(args, build_model_config(plan_model(args))))
        load_checkpoint(directory, [model])
        weights.append({k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)})
    return weights


STEPS = 12


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The corpus, and the uninterrupted 2-rank run on it: (prefix, its log's step lines, its last checkpoint)."""
    root = tmp_path_factory.mktemp("preemption")
    values, reference = _preemptible(root), root / "reference"
    log = finished(torchrun(flags(**values, save=str(reference))))
    return values, step_lines(log), reference / f"iter_{STEPS:07d}"


def _preemptible(root) -> dict:
    """A run with the default data-loader workers, dropout on (the RNG state must resume too)."""
    return base_args(write_corpus(root),
                     train_iters=STEPS, attention_output_dropout=0.1, exit_signal_handler=True)


def _job(run) -> dict:
    """The processes of a torchrun job: {"launcher": [torchrun], "rank 0": [rank 0], "job": [torchrun, each
    rank, each rank's data-loader workers]} (what SLURM's scancel and preemption signal)."""
    launcher = psutil.Process(run.pid)
    ranks = {int(p.environ()["RANK"]): p for p in launcher.children() if "RANK" in p.environ()}
    assert len(ranks) == 2 and all(rank.children() for rank in ranks.values()), "expected 2 ranks with workers"
    return {"launcher": [launcher], "rank 0": [ranks[0]], "job": [launcher, *launcher.children(recursive=True)]}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("signum, target", [(signal.SIGTERM, "rank 0"), (signal.SIGTERM, "launcher"),
                                            (signal.SIGTERM, "job"), (signal.SIGINT, "launcher"),
                                            (signal.SIGINT, "job")])
def test_stop_request_saves_the_step_and_the_relaunch_resumes_exactly(signum, target, straight, tmp_path):
    """--exit-signal-handler with the default data-loader workers: a stop request to one rank (the other
    must stop at the same step), to torchrun (which forwards it to each rank's process group, workers
    included) or to every process of the job finishes the step, saves it, and the relaunch ends on the
    uninterrupted run's losses and weights."""
    values, expected, reference = straight
    root = tmp_path / "ckpt"
    argv = flags(**values, save=str(root), load=str(root))

    run = torchrun(argv)
    log = []
    for line in run.stdout:  # the marker: step 2 is logged, so the handler is in place and a step runs
        log.append(line)
        if re.match(r"step\s+2/", line):
            break
    for process in _job(run)[target]:
        process.send_signal(signum)
    log += list(run.stdout)
    run.wait()  # a signalled torchrun exits 1 with its own traceback: what counts is what the ranks did
    log = "".join(log)
    stopped = re.search(rf"{signum.name} received: stopped after step (\d+), saved", log)
    assert stopped and not re.search(r"\[rank\d\]:", log), log  # no rank failed
    stop = int(stopped.group(1))
    assert 2 <= stop < STEPS and latest_iteration(root) == stop, log

    resumed = finished(torchrun(argv))
    assert f"continuing at step {stop}" in resumed and latest_iteration(root) == STEPS
    assert {**step_lines(log), **step_lines(resumed)} == expected and len(expected) == STEPS

    ((resumed_weights, reference_weights),) = run_ranks(
        1, _weights, [str(root / f"iter_{STEPS:07d}"), str(reference)], timeout=600)
    assert all(torch.equal(resumed_weights[k], reference_weights[k]) for k in reference_weights)


def _duration(rank, prefix, root):
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    def run(**overrides):
        args = make_arguments(**base_args(prefix, train_iters=4, attention_output_dropout=0.1, **overrides))
        return [(r["loss"], r["grad_norm"], r["lr"]) for r in pretrain(args) if "loss" in r]

    straight = run()
    # A limit already past when the first step ends: every launch does one step, saves and exits.
    launches = [run(save=root, load=root, exit_duration_in_mins=1e-9) for _ in range(4)]
    return straight, launches, latest_iteration(root)


@pytest.mark.timeout(900)
def test_exit_duration_saves_each_launch_and_the_chain_equals_a_straight_run(tmp_path):
    root = str(tmp_path / "ckpt")
    ((straight, launches, latest),) = run_ranks(1, _duration, write_corpus(tmp_path), root, timeout=800)
    assert [len(losses) for losses in launches] == [1, 1, 1, 1] and latest == 4
    assert [losses[0] for losses in launches] == straight  # bit-exact


@pytest.mark.timeout(900)
def test_ctrl_c_without_the_handler_says_in_one_line_where_the_last_checkpoint_is(tmp_path):
    """Issue 27, item 6: Ctrl-C (SIGINT to the whole foreground process group, data-loader workers
    included) without --exit-signal-handler printed 113 lines of KeyboardInterrupt traceback."""
    root = tmp_path / "ckpt"
    argv = flags(**base_args(write_corpus(tmp_path), train_iters=100000), save=str(root), save_interval=2)
    run = subprocess.Popen([sys.executable, "-m", "ettin_megatron.pretrain", *argv], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True,
                           env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                "MASTER_PORT": str(free_port())})
    for line in run.stdout:  # step 3 is logged, so step 2 is saved
        if re.match(r"step\s+3/", line):
            break
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=300)
    saved = latest_iteration(root)
    assert run.returncode == 130 and saved >= 2, (out, err)
    assert err.strip().splitlines() == [
        f"error: interrupted: the last checkpoint is {root}/iter_{saved:07d}, where a rerun resumes; "
        "--exit-signal-handler makes Ctrl-C save the step before it stops."], err
