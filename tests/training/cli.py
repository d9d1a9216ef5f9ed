"""The pretrain command line as users launch it: flags from base_args' values, 2-rank torchrun jobs of
``-m ettin_megatron.pretrain``, and the step lines of their logs."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from ettin_megatron.runtime.distributed import free_port

REPO = Path(__file__).resolve().parents[2]


def flags(**values) -> list[str]:
    """Command-line flags of base_args' values."""
    out = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            out += [flag, *map(str, value)]
        elif value is not None:
            out += [flag, str(value)]
    return out


def torchrun(argv: list[str], nproc: int = 2) -> subprocess.Popen:
    """``torchrun --nproc-per-node N -m ettin_megatron.pretrain ARGV``, as a shell starts a job: SIGINT at
    its default (a background pytest would pass it on ignored), and time for the ranks to save after a
    signal. stdout and stderr come merged, as text."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
               str(free_port()), "-m", "ettin_megatron.pretrain", *argv]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finished(run: subprocess.Popen) -> str:
    """The whole log of a job that must succeed."""
    log = run.communicate()[0]
    assert run.returncode == 0, log
    return log


def step_lines(log: str) -> dict:
    """{step: "loss ... | lr ... | grad norm ..."} of a log's step lines."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"step\s+(\d+)/\d+ \| (loss .* grad norm \S+)", log)}
