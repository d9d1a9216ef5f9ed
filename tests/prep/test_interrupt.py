"""``kill -TERM`` / ``kill -INT`` of a real tools/preprocess_data.py run mid-way: its worker processes
end and its temporary files are removed (no output, nothing left behind)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.texts import training_texts


def _children(pid: int) -> set:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.split("/")[2]))
    return found


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _default_sigint() -> None:
    """Give the tool SIGINT's default disposition: a shell starts a background job (``pytest &``, a CI
    runner's) with SIGINT ignored, the tool inherits that, and Python then rightly keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_workers_and_removes_temp_files(tmp_path, tokenizer_dir, signum):
    texts = training_texts(400)
    with open(tmp_path / "big.jsonl", "w") as f:  # far more than the run gets through before the signal
        for i in range(200_000):
            f.write(json.dumps({"text": texts[i % len(texts)]}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.Popen([sys.executable, "tools/preprocess_data.py", "--input", str(tmp_path / "big.jsonl"),
                            "--output-prefix", str(out / "data"), "--tokenizer-model", tokenizer_dir,
                            "--workers", "2", "--chunk-size", "50", "--log-interval", "0"],
                           stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    temp = out / f"data_text_document.bin.{run.pid}.tmp"
    _wait_for(lambda: temp.exists() and temp.stat().st_size > 0 and len(_children(run.pid)) >= 2)
    workers = _children(run.pid)
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == "interrupted: workers stopped, no output written"
    _wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=60)
    assert os.listdir(out) == []
