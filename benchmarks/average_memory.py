"""Peak memory of averaging K checkpoints (tools/average_checkpoints.py) against one model's size.

Makes K checkpoints of one model with random weights (a model of --size saved K times, fp32, no
training), then runs, each as its own command in a fresh process (peak RSS only grows):
the tool's imports alone (the interpreter and libraries, for scale) and the average of the first 2
and of all K checkpoints. Reported: the peak RSS of each command (getrusage of its process tree) and
what it holds above the imports, in units of one model's weights. Bounded streaming shows as a peak that does not
grow with K. Everything is written under --dir and deleted at the end.

    nice -n 10 python -m benchmarks.average_memory --size 150m --count 4 --dir /tmp/average_memory
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = """import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, code)"""
"""Runs a command and prints the largest resident set of its process tree (KiB on Linux) and its status:
in a process of its own, so that no earlier command's peak counts."""


LIBRARIES = "import ettin_megatron.commands.average_checkpoints, ettin_megatron.convert.averaging"
"""What the tool imports before it reads a checkpoint: the interpreter, torch, megatron-core, transformers."""


def make_checkpoints(size: str, count: int, directory: Path) -> tuple[list[Path], int]:
    """``count`` checkpoints of a ``size`` model, each with its own random weights; returns them and the
    bytes of one model's weights."""
    import torch

    from ettin_megatron.checkpoint import save_checkpoint
    from ettin_megatron.config import ettin_config, model_fields
    from ettin_megatron.convert.megatron_side import build_model, conversion_config

    model = build_model(conversion_config(model_fields(ettin_config(size))))
    paths = []
    with torch.no_grad():
        for i in range(count):
            generator = torch.Generator().manual_seed(i)
            for param in model.parameters():
                param.normal_(0.0, 0.02, generator=generator)
            paths.append(save_checkpoint(directory / f"ckpt{i}", 0, [model], model.config))
    return paths, sum(p.numel() * p.element_size() for p in model.parameters())


def peak_rss(argv: list[str]) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of the command ``argv``, which must succeed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, cwd=REPO)
    peak, code = done.stdout.split()[-2:]
    if code != "0":
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
    return int(peak), time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="150m")
    parser.add_argument("--count", type=int, default=4, help="K, the checkpoints averaged")
    parser.add_argument("--dir", default="/tmp/average_memory", help="scratch directory (deleted at the end)")
    args = parser.parse_args(argv)

    directory = Path(args.dir)
    shutil.rmtree(directory, ignore_errors=True)
    try:
        checkpoints, weights = make_checkpoints(args.size, args.count, directory)
        tool = [sys.executable, str(REPO / "tools" / "average_checkpoints.py"), "--load"]
        commands = {
            "libraries only (import, no checkpoint)": [sys.executable, "-c", LIBRARIES],
            "average K=2 --save": [*tool, *map(str, checkpoints[:2]), "--save", str(directory / "avg2")],
            f"average K={args.count} --save": [*tool, *map(str, checkpoints), "--save", str(directory / "avg")],
        }
        rows, libraries = [], None
        for name, command in commands.items():
            peak, seconds = peak_rss(command)
            libraries = libraries or peak
            rows.append({"command": name, "peak_rss_gb": round(peak / 1e9, 2), "seconds": round(seconds, 1),
                         "above_libraries_over_weights": round((peak - libraries) / weights, 2)})
        print(json.dumps({"size": args.size, "weights_gb": round(weights / 1e9, 3), "rows": rows}, indent=2))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
