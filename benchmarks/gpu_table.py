"""The table of benchmarks/gpu_check.sh: every number of issue 29 read from the logs in its $OUT, with the
goals marked met or missed; printed and written to OUT/table.md.

A number whose step failed, timed out or was skipped reads "-"; a training run cut short still gives the
windows it logged. tokens/s and MFU of a training run are medians over its logged windows after the
first (start-up and the first step's allocations), peak memory its highest. The goals read the `packed`
runs, whose samples are full: a `document` sample is one document, and the sample corpus's documents are
short (its tokens per step say how short).

    python -m benchmarks.gpu_table OUT
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import torch

from benchmarks.train_cpu import VOCAB
from ettin_megatron.config import ettin_config
from ettin_megatron.model.counts import attended_pairs, count_parameters, training_flops
from ettin_megatron.training.metrics import PEAK_BF16_FLOPS

# Issue 29's goals.
GOAL_TOKENS_150M = 400_000   # tokens/s per H100 at 150m (1.35x Ettin's own run)
GOAL_MFU_400M = 0.40
GOAL_VS_HF_150M = 1.5


def read(out: Path, name: str) -> str:
    path = out / name
    return path.read_text(errors="replace") if path.exists() else ""


def last_json(text: str) -> dict:
    """The last line of ``text`` that is a JSON object (train_cpu's result), or {}."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def training_run(text: str) -> dict:
    """Model size, tokens per step, tokens/s, MFU and peak memory of a pretrain log."""
    logged = [line for line in text.splitlines() if line.startswith("step ")]
    windows = logged[1:]
    last = re.match(r"step\s+(\d+).*? tokens ([\d,]+)", logged[-1]) if logged else None
    numbers = {key: [float(m.group(1).replace(",", "")) for line in windows if (m := re.search(pattern, line))]
               for key, pattern in (("tokens_per_s", r"tokens/s ([\d,]+)"), ("mfu", r"MFU ([\d.]+)%"),
                                    ("peak_gb", r"peak mem ([\d.]+) GB"))}
    size = re.search(r"^model (\S+) \(", text, re.M)
    return {"size": size.group(1) if size else None,
            "tokens_per_step": int(last.group(2).replace(",", "")) / int(last.group(1)) if last else None,
            "tokens_per_s": statistics.median(numbers["tokens_per_s"]) if numbers["tokens_per_s"] else None,
            "mfu": statistics.median(numbers["mfu"]) / 100 if numbers["mfu"] else None,
            "peak_gb": max(numbers["peak_gb"], default=None)}


def counted_flops_per_token(size: str, seq: int) -> tuple[float, float]:
    """model/counts.py's training FLOPs per token of full-length rows of ``seq`` tokens: as our MFU counts
    them (local layers score their window only), and with every layer scoring all seq x seq pairs (what
    transformers' masked SDPA computes, so what FlopCounterMode counts for it)."""
    config = ettin_config(size, vocab_size=VOCAB, seq_length=seq)
    params = count_parameters(config)
    windowed = attended_pairs(torch.tensor([0, seq]), config).item()
    return (training_flops(config, params, seq, windowed) / seq,
            training_flops(config, params, seq, config.num_layers * seq * seq) / seq)


def number(value, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def goal(value, target) -> str:
    return "-" if value is None else ("met" if value >= target else "missed")


def main() -> None:
    out = Path(sys.argv[1])
    steps = [line.split("\t") for line in read(out, "steps.tsv").splitlines()]
    card = read(out, "gpu.log").strip().splitlines()[0] if ["gpu", "ok"] in [s[:2] for s in steps] else "no GPU"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in card), None)
    rows = []  # (what, measured, goal, met)

    for line in read(out, "correctness.log").splitlines():
        if line.startswith(("ok ", "FAIL", "skip")):
            status, _, rest = line.partition(" ")
            what, _, detail = rest.strip().partition(": ")
            rows.append((what, detail, "", status.strip()))
    parity = read(out, "parity-gpu.log")
    for objective, here, device, cpu in re.findall(r"^(\w+): loss ([\d.]+) \((.*?)\) vs ([\d.]+)", parity, re.M):
        met = abs(float(here) - float(cpu)) <= 1e-4 * abs(float(cpu))
        rows.append((f"pretrain's step-1 loss, {objective}: {device} vs CPU", f"{here} vs {cpu}", "1e-4 relative",
                     "met" if met else "missed"))

    runs = {(size, layout): training_run(read(out, f"train-{size}-{layout}.log"))
            for size in ("17m", "150m", "400m") for layout in ("packed", "document")}
    goals = {("150m", "packed"): (f">= {GOAL_TOKENS_150M:,} tokens/s", "tokens_per_s", GOAL_TOKENS_150M),
             ("400m", "packed"): (f">= {GOAL_MFU_400M:.0%} MFU", "mfu", GOAL_MFU_400M)}
    for (size, layout), run in runs.items():
        target, key, bound = goals.get((size, layout), ("", None, None))
        rows.append((f"train {size} {layout} (model {run['size'] or '-'}): tokens/s; MFU; peak memory; tokens/step",
                     f"{number(run['tokens_per_s'])}; {number(run['mfu'], '{:.1%}')}; "
                     f"{number(run['peak_gb'], '{:.1f} GB')}; {number(run['tokens_per_step'])}",
                     target, goal(run[key], bound) if key else ""))

    hf, ours = last_json(read(out, "hf-150m.log")), last_json(read(out, "ours-150m.log"))
    if hf and ours:
        ratio = ours["tokens_per_s"] / hf["tokens_per_s"]
        rows.append((f"150m step vs transformers, same {hf['batch']} x {hf['seq']} batches",
                     f"{ratio:.2f}x ({ours['tokens_per_s']:,.0f} vs {hf['tokens_per_s']:,.0f} tokens/s)",
                     f">= {GOAL_VS_HF_150M}x", goal(ratio, GOAL_VS_HF_150M)))
    if hf:
        tokens_per_s = runs[("150m", "packed")]["tokens_per_s"]
        rows.append(("pretrain 150m packed (data path included) vs transformers' step",
                     "-" if tokens_per_s is None else f"{tokens_per_s / hf['tokens_per_s']:.2f}x", "", ""))
        windowed, dense = counted_flops_per_token(hf["size"], hf["seq"])
        rows.append((f"FLOPs/token {hf['size']}: FlopCounterMode on transformers vs counts.py dense",
                     f"{hf['flops_per_token']:.4g} vs {dense:.4g} ({hf['flops_per_token'] / dense:.3f}x)",
                     "", ""))
        if peak and tokens_per_s:
            rows.append(("150m packed MFU by FlopCounterMode's count (dense attention: an upper bound)",
                         f"{tokens_per_s * hf['flops_per_token'] / peak:.1%} (counts.py windowed: "
                         f"{tokens_per_s * windowed / peak:.1%})", "", ""))
    for size in ("150m", "400m"):
        profile = last_json(read(out, f"ours-{size}.log"))
        if "profile_kernel_s" not in profile:
            continue
        wall, kernel = profile["step_s"], profile["profile_kernel_s"]
        rows.append((f"{size} step, {profile['batch']} x {profile['seq']}: wall / kernels / host gaps "
                     f"(profile-{size}.txt)", f"{wall * 1e3:.1f} / " + (
                         f"{kernel * 1e3:.1f} / {(wall - kernel) * 1e3:.1f} ms" if kernel else "- / - ms (no CUDA)"),
                     "", ""))

    delivered = dict(re.findall(r"^\| (\w+) \| \d+ \| \d+ \| 2 \| ([\d,]+) \|", read(out, "data-pipeline.log"), re.M))
    for size in ("17m", "150m"):
        for layout in ("packed", "document"):
            needed, given = runs[(size, layout)]["tokens_per_s"], delivered.get(layout)
            given = float(given.replace(",", "")) if given else None
            rows.append((f"data {size} {layout}: 2 workers deliver vs the step consumes (tokens/s)",
                         f"{number(given)} vs {number(needed)}", "deliver >= consume",
                         "-" if None in (given, needed) else goal(given / needed, 1.0)))

    versions = next((line for line in read(out, "versions.log").splitlines() if line.startswith("python ")), "-")
    lines = [f"GPU check: {card}; {versions}",
             "steps: " + ", ".join(f"{name} {status} ({seconds}s)" for name, status, seconds, _ in steps), "",
             "| what | measured | goal | met |", "|---|---|---|---|",
             *(f"| {what} | {measured} | {target} | {met} |" for what, measured, target, met in rows)]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
