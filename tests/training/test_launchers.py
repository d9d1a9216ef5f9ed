"""The launchers as users run them: examples/pretrain_ettin_*.sh on their own data, and the SLURM script
under a fake srun / scontrol that record their arguments and environment.

A launcher error is checked once, before torchrun starts: one line naming the launcher variable to
change, exit status 2. A rerun with the same SAVE resumes (LOAD defaults to SAVE) and, once complete,
exits 0 without training. Jobs never install the package.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ettin_megatron.runtime.distributed import free_port
from tests.convert.helpers import train_tiny_tokenizer

pytestmark = pytest.mark.timeout(900)  # each launcher run starts python three times (check, torchrun, rank)
SBATCH = Path("examples/slurm/pretrain_ettin.sbatch")


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """A tokenizer and a dataset preprocessed with it: what a user brings."""
    from tools.preprocess_data import main

    root = tmp_path_factory.mktemp("own")
    tokenizer = train_tiny_tokenizer(root)
    assert main(["--input", str(root / "corpus.jsonl"), "--output-prefix", str(root / "data"),
                 "--tokenizer-model", str(tokenizer), "--workers", "1", "--log-interval", "0"]) == 0
    return str(root / "data_text_document"), str(tokenizer)


def launch(tmp_path, kind="encoder", *argv, **variables):
    env = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": str(free_port()), "WORK_DIR": str(tmp_path / "demo"),
           **variables}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(["bash", f"examples/pretrain_ettin_{kind}.sh", *argv], env=env, capture_output=True,
                          text=True, timeout=560)


def refusal(done) -> str:
    """The one line of a launcher refusal: exit 2, nothing from torchrun."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "ChildFailedError" not in done.stderr and "torch.distributed" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


def test_errors_are_checked_once_and_name_the_launcher_variable(tmp_path, own_data):
    prefix, tokenizer = own_data
    own = dict(DATA_PATH=prefix, TOKENIZER=tokenizer)
    assert refusal(launch(tmp_path, TP="2", **own)) == (
        "error: 1 processes (NPROC_PER_NODE x NNODES) are not divisible by TP x PP = 2; change the process "
        "count or the parallel sizes.")
    assert refusal(launch(tmp_path, MODEL_SIZE="17m", MICRO_BATCH="8", GLOBAL_BATCH_SIZE="8", **own)) == (
        "error: RAMPUP_BATCH_SIZE_TOKENS start 576 exceeds GLOBAL_BATCH_SIZE 8; lower it.")
    blocker = tmp_path / "older-output"  # where SAVE's directory must go (root ignores a read-only mode)
    blocker.write_text("kept\n")
    assert refusal(launch(tmp_path, SAVE=str(blocker / "ckpt"), **own)) == (
        f"error: SAVE: cannot write in {blocker} (Not a directory); choose a writable location")
    assert refusal(launch(tmp_path, EXTRA_ARGS="--recompute-granularity full", **own)) == (
        "error: --recompute-granularity full needs --recompute-method (uniform | block) and --recompute-num-layers. "
        "(--recompute-granularity, --recompute-method, --recompute-num-layers: pretrain flags, given in EXTRA_ARGS)")
    assert refusal(launch(tmp_path, PHASE="2")) == (
        "error: the demo trains phase 1 of the tiny recipe only; unset PHASE / RECIPE, or set DATA_PATH or DATA_MIX")
    assert not (tmp_path / "demo").exists()


BAD_VALUES = [  # (variable, one bad value, the start of its one-line refusal); {prefix}: the user's data
    ("MODEL_SIZE", "2b", "MODEL_SIZE: invalid choice: '2b'"),
    ("PHASE", "4", "PHASE=4: the tiny encoder has phases 1; choose one, or set RECIPE"),
    ("RECIPE", "/nope.yaml", "RECIPE /nope.yaml does not exist"),
    ("TP", "0", "TP: must be a positive integer, got 0"),
    ("PP", "abc", "PP: must be a positive integer, got abc"),
    ("VPP", "0", "VPP: must be a positive integer, got 0"),
    ("NPROC_PER_NODE", "0", "0 processes (NPROC_PER_NODE x NNODES): both must be positive."),
    ("NNODES", "abc", "NNODES: must be a positive integer, got abc"),
    ("NODE_RANK", "3", "NODE_RANK must be a node number from 0 to NNODES - 1 = 0 (got 3)"),
    ("MASTER_PORT", "70000", "MASTER_PORT must be a port number from 1 to 65535 (got 70000)"),
    ("PRECISION", "fp16", "PRECISION must be bf16, fp8 or fp32 (got fp16)"),
    ("DATA_MIX", "/nope.yaml", "DATA_MIX /nope.yaml does not exist."),
    ("DATA_PATH", "-1 {prefix} 0.3 {prefix}", "DATA_PATH weight -1 of {prefix} must be a positive number"),
    ("TOKENIZER", "/nope", "TOKENIZER /nope does not exist."),
    ("SAVE", "/sys/ettin", "SAVE: cannot write in /sys"),
    ("LOAD", "/nope", "LOAD /nope holds no checkpoint; fix LOAD"),
    ("FINETUNE", "yes", "FINETUNE must be 1 (start from LOAD's weights) or 0 (got yes)"),
    ("TRAIN_ITERS", "0", "TRAIN_ITERS: must be a positive integer, got 0"),
    ("TRAIN_ITERS", "-3", "TRAIN_ITERS: must be a positive integer, got -3"),
    ("TRAIN_TOKENS", "0", "TRAIN_TOKENS: must be a positive integer, got 0"),
    ("MICRO_BATCH", "0", "MICRO_BATCH: must be a positive integer, got 0"),
    ("MICRO_BATCH", "-4", "MICRO_BATCH: must be a positive integer, got -4"),
    ("GLOBAL_BATCH_SIZE", "0", "GLOBAL_BATCH_SIZE: must be a positive integer, got 0"),
    ("GLOBAL_BATCH", "0", "GLOBAL_BATCH_SIZE: must be a positive integer, got 0"),
    ("RAMPUP_BATCH_SIZE", "8 8", "RAMPUP_BATCH_SIZE takes three numbers: START INCREMENT SAMPLES."),
    ("RAMPUP_BATCH_SIZE_TOKENS", "a b c", "RAMPUP_BATCH_SIZE_TOKENS: must be a positive integer, got a"),
    ("SEQ_LENGTH", "abc", "SEQ_LENGTH: must be a positive integer, got abc"),
    ("LR", "-1", "LR: must be a positive number, got -1"),
    ("TENSORBOARD_DIR", "/sys/ettin", "TENSORBOARD_DIR: cannot write in /sys"),
    ("WORK_DIR", "/sys/ettin", "WORK_DIR: cannot create /sys/ettin; choose a writable location"),
    ("EXTRA_ARGS", "--no-such-flag", "unrecognized arguments: --no-such-flag"),
    ("PYTHON", "/nope", "PYTHON: /nope is not a command; set it to a Python 3 interpreter"),
]
"""Every variable a user sets for the launcher but MASTER_ADDR (any host name is one until torchrun meets it)."""


def launcher_variables() -> set:
    text = Path("examples/pretrain_ettin_common.sh").read_text()
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):[-?]", text)) | set(re.findall(r"^pass ([A-Z_]+)", text, re.M))


def test_the_bad_value_table_covers_every_launcher_variable():
    set_elsewhere = {"OBJECTIVE", "SLURM_JOB_ID"}  # by the wrappers, by SLURM
    assert launcher_variables() - set_elsewhere - {"MASTER_ADDR"} == {variable for variable, _, _ in BAD_VALUES}


@pytest.mark.parametrize("variable, value, message", BAD_VALUES)
def test_each_variable_refuses_a_bad_value_in_one_line(tmp_path, own_data, variable, value, message):
    """Issue 27: the README promises one line naming the variable, exit status 2, for every variable. Some
    values reached torchrun and died there (a ZeroDivisionError, a bare AssertionError, torchrun's own
    traceback for a port or node rank); TRAIN_ITERS=0 trained nothing and saved an iter_0000000 that every
    later run into SAVE crashed on; FINETUNE=yes and a mistyped LOAD silently started from scratch."""
    prefix, tokenizer = own_data
    variables = dict(DATA_PATH=prefix, TOKENIZER=tokenizer, SAVE=str(tmp_path / "ckpt"))
    if variable in ("DATA_MIX", "WORK_DIR"):  # the other data source (DATA_MIX), or the demo (WORK_DIR)
        variables["DATA_PATH"] = ""
    variables[variable] = value.format(prefix=prefix)
    assert refusal(launch(tmp_path, **variables)).startswith("error: " + message.format(prefix=prefix))
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "demo").exists()


def test_tiny_on_own_data_then_a_rerun_resumes_or_says_it_is_complete(tmp_path, own_data):
    prefix, tokenizer = own_data
    own = dict(MODEL_SIZE="tiny", DATA_PATH=prefix, TOKENIZER=tokenizer, SAVE=str(tmp_path / "ckpt"),
               MICRO_BATCH="4", GLOBAL_BATCH_SIZE="8")
    first = launch(tmp_path, TRAIN_ITERS="2", **own)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (tmp_path / "ckpt/latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert re.search(r"^summary: step 2, [\d,]+ tokens in all; this launch trained 2 steps, [\d,]+ tokens in "
                     r"\d+:\d\d:\d\d \([\d,]+ tokens/s\)\.$", first.stdout, re.M), first.stdout[-2000:]
    again = launch(tmp_path, TRAIN_ITERS="2", **own)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("this run is already complete, nothing to do.") == 1
    assert (tmp_path / "ckpt/latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_a_shortened_recipe_anneals_over_the_same_share_of_the_run(tmp_path, own_data):
    """Issue 27, item 8: TRAIN_ITERS=20 on the tiny recipe (300 steps, the last 91 annealed) annealed over the
    whole run (only the demo rescaled); now over its last ceil(91 x 20 / 300) = 7 steps, as the log says."""
    prefix, tokenizer = own_data
    done = launch(tmp_path, DATA_PATH=prefix, TOKENIZER=tokenizer, TRAIN_ITERS="20", MICRO_BATCH="4",
                  GLOBAL_BATCH_SIZE="8", EXTRA_ARGS="--log-interval 1 --eval-iters 0 --num-workers 0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("LR schedule: 1-step warm-up to 3.00e-03, then stable, and a minus_sqrt anneal to 3.00e-04 over the "
            "last 7 of 20 steps") in done.stdout.splitlines()
    lrs = [float(lr) for lr in re.findall(r"^step +\d+/20 \| loss \S+ \| lr (\S+)", done.stdout, re.M)]
    assert len(lrs) == 20 and set(lrs[:13]) == {3e-3} and lrs[-1] == pytest.approx(3e-4)
    assert all(a > b for a, b in zip(lrs[12:], lrs[13:]))  # the anneal: steps 14 to 20
    ettin = launch(tmp_path, "encoder", "--validate-only", MODEL_SIZE="17m", DATA_PATH=prefix, TOKENIZER=tokenizer,
                   TRAIN_ITERS="30", EXTRA_ARGS="--eval-iters 0")  # refused before, on --lr-warmup-tokens
    assert ettin.returncode == 0 and not ettin.stderr.strip(), ettin.stderr


@pytest.mark.parametrize("killed", ["launcher", "torchrun"])
def test_ranks_end_when_their_launcher_is_killed(tmp_path, own_data, killed):
    """Issue 27, item 6: kill -9 of the launcher left its training process orphaned, burning CPU. Every
    process under the launcher must be gone soon after the launcher, or torchrun below it, is killed."""
    prefix, tokenizer = own_data
    log = tmp_path / "log"
    env = dict(os.environ, PYTHON=sys.executable, MASTER_PORT=str(free_port()), MODEL_SIZE="tiny", DATA_PATH=prefix,
               TOKENIZER=tokenizer, TRAIN_ITERS="100000", MICRO_BATCH="4", GLOBAL_BATCH_SIZE="8")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    with open(log, "w") as out:
        launcher = psutil.Popen(["bash", "examples/pretrain_ettin_encoder.sh"], env=env, stdout=out, stderr=out)
    processes = [launcher]
    try:
        deadline = time.time() + 400
        while not re.search(r"step\s+\d+/", log.read_text()) and time.time() < deadline and launcher.poll() is None:
            time.sleep(1)
        assert re.search(r"step\s+\d+/", log.read_text()), log.read_text()[-3000:]
        processes += launcher.children(recursive=True)
        torchrun = next(p for p in processes if "torch.distributed.run" in " ".join(p.cmdline()))
        (launcher if killed == "launcher" else torchrun).kill()
        deadline = time.time() + 60
        while time.time() < deadline and _running(processes[1:]):
            time.sleep(1)
        assert not _running(processes[1:]), [p.cmdline() for p in _running(processes[1:])]
    finally:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        launcher.wait()


def _running(processes: list) -> list:
    """The processes that still run (a zombie has ended: only its exit status waits to be read)."""
    running = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
    return running


def test_the_launchers_own_arguments_are_pretrain_flags(tmp_path, own_data):
    """Issue 27, item 9: `bash ...encoder.sh --validate-only` ignored its argument and trained a full run."""
    prefix, tokenizer = own_data
    own = dict(DATA_PATH=prefix, TOKENIZER=tokenizer, SAVE=str(tmp_path / "ckpt"), TRAIN_ITERS="2")
    checked = launch(tmp_path, "encoder", "--validate-only", **own)
    assert checked.returncode == 0 and "step" not in checked.stdout, checked.stdout + checked.stderr
    assert not (tmp_path / "ckpt").exists()
    assert refusal(launch(tmp_path, "encoder", "--no-such-flag", **own)) == (
        "error: unrecognized arguments: --no-such-flag")


def _fake_slurm(tmp_path) -> dict:
    """srun and scontrol that record what they were given; the environment of a 2-node job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/usr/bin/env bash\n{sys.executable} -c "import json, os, sys; '
                                  f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, "
                                  f"open('{tmp_path}/srun.json', 'w'))\" \"$@\"\n")
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'node7\\nnode8\\n'\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=sys.executable, SLURM_JOB_ID="42",
                SLURM_NNODES="2", SLURM_JOB_NODELIST="node[7-8]", SLURM_CPUS_PER_TASK="64")


def test_sbatch_checks_before_srun_and_passes_cpus_per_task(tmp_path):
    env = _fake_slurm(tmp_path)
    directives = [line.split("=", 1) for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH --")]
    output = dict(d for d in directives if len(d) == 2)["#SBATCH --output"]
    assert os.path.dirname(output) == "", "slurm opens --output before the script: only the submit dir exists"

    def sbatch(**variables):
        return subprocess.run(["bash", str(SBATCH)], env={**env, **variables}, capture_output=True, text=True,
                              timeout=120)

    mix = dict(DATA_MIX="examples/mixtures/phase1.yaml", MODEL_SIZE="400m")
    done = sbatch(**mix)
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: examples/mixtures/phase1.yaml names ${ETTIN_DATA}/...; set ETTIN_DATA to the preprocessed data root")
    assert not (tmp_path / "srun.json").exists()

    done = sbatch(**mix, ETTIN_DATA="/shared/ettin")
    assert done.returncode == 0, done.stderr
    srun = json.loads((tmp_path / "srun.json").read_text())
    assert "--cpus-per-task=64" in srun["argv"] and srun["argv"][-1].endswith("bash examples/pretrain_ettin_encoder.sh")
    assert {k: srun["env"][k] for k in ("MASTER_ADDR", "NNODES", "NPROC_PER_NODE", "ETTIN_DATA", "PYTHON")} == {
        "MASTER_ADDR": "node7", "NNODES": "2", "NPROC_PER_NODE": "8", "ETTIN_DATA": "/shared/ettin",
        "PYTHON": sys.executable}


def test_jobs_never_install(tmp_path):
    """Without the package, the job and the launcher inside it stop in one line: no .venv, no pip."""
    env = _fake_slurm(tmp_path)
    fake_python = tmp_path / "bin" / "python-without-ettin"
    fake_python.write_text("#!/usr/bin/env bash\nexit 1\n")
    fake_python.chmod(0o755)
    repo = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{Path.cwd()}", str(repo)], check=True)
    for script in (SBATCH, Path("examples/pretrain_ettin_encoder.sh")):
        (repo / script).write_text(script.read_text())
        (repo / "examples/pretrain_ettin_common.sh").write_text(Path("examples/pretrain_ettin_common.sh").read_text())
        done = subprocess.run(["bash", str(script)], cwd=repo, env={**env, "PYTHON": str(fake_python)},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (f"error: ettin_megatron is not installed for {fake_python}; install it before "
                                       "submitting (pip install -e .)")
        assert not (repo / ".venv").exists() and not (tmp_path / "srun.json").exists()


def test_readme_lists_every_launcher_variable():
    import re

    text = Path("examples/pretrain_ettin_common.sh").read_text() + SBATCH.read_text()
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):[-?]", text))
    internal = {"OBJECTIVE", "SLURM_JOB_ID", "GLOBAL_BATCH"}  # set by the wrappers, by slurm; a synonym
    readme = Path("README.md").read_text()
    missing = sorted(name for name in read - internal if f"`{name}`" not in readme)
    assert not missing, missing
