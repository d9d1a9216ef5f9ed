"""Training throughput on the CPU: our stack (Megatron-Core DDP + schedule + optimizer around the
EttinModel, exactly what ettin_megatron.pretrain runs) against transformers' ModernBertForMaskedLM with
torch.optim.AdamW, on the same batches with the same number of threads.

A step is forward + backward + optimizer step over one batch of ``--batch`` full-length sequences
(no padding, so both process the same tokens; 30% of positions labelled, as MLM phase 1). Each
implementation runs in its own process (our CPU emulation of CUDA is not loaded into the transformers
run). Reported: training tokens/s, median step time over the timed steps after warm-up.

    python -m benchmarks.train_cpu                      # tiny and 17m, 2 threads, writes RESULTS.md
    python -m benchmarks.train_cpu --impl ours --size tiny   # one measurement, JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ettin_megatron.vocab import MODERNBERT_IDS

#: ModernBERT's padded vocabulary; its ordinary (text) tokens are the ids below [UNK].
VOCAB, ORDINARY = MODERNBERT_IDS.padded_vocab_size, MODERNBERT_IDS.unk


def batches(n: int, batch: int, seq: int, seed: int = 0):
    """``n`` batches of random ordinary tokens [batch, seq] with 30% of positions labelled."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, ORDINARY, (batch, seq), generator=g)
        labelled = torch.rand(batch, seq, generator=g) < 0.3
        out.append((tokens, labelled))
    return out


def run_ours(size: str, batch: int, seq: int, steps: int, warmup: int) -> list[float]:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from ettin_megatron.data.batches import collate
    from ettin_megatron.runtime import ParallelLayout, initialize
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.forward_step import make_forward_step
    from ettin_megatron.training.optimizer import build_optimizer
    from ettin_megatron.training.plan import plan_model
    from ettin_megatron.training.setup import build_model, build_model_config, wire_schedule_hooks

    args = make_arguments(model_size=size, vocab_size=VOCAB, seq_length=seq, micro_batch_size=batch,
                          global_batch_size=batch, attention_output_dropout=0.0, spec="local",
                          attention_backend="sdpa", weight_decay=0.01, clip_grad=0.0)
    initialize(ParallelLayout(), seed=0)
    config = build_model_config(plan_model(args))
    model = build_model(args, config)
    optimizer = build_optimizer(args, model)
    wire_schedule_hooks(config, model, optimizer, args)
    forward_backward, step_fn = get_forward_backward_func(), make_forward_step(torch.device("cpu"), config)
    micro = []
    for tokens, labelled in batches(warmup + steps, batch, seq):
        samples = [{"tokens": t.numpy(), "labels": (t * m).numpy(), "loss_mask": m.float().numpy(),
                    "segment_lengths": [seq]} for t, m in zip(tokens, labelled)]
        micro.append(collate(samples))
    times = []
    for b in micro:
        start = time.perf_counter()
        for chunk in model:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        forward_backward(forward_step_func=step_fn, data_iterator=iter([b]), model=model, num_microbatches=1,
                         seq_length=seq, micro_batch_size=1, forward_only=False)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def run_hf(size: str, batch: int, seq: int, steps: int, warmup: int) -> list[float]:
    import transformers

    from ettin_megatron.config import ettin_config
    from ettin_megatron.convert.hf_mapping import hf_config

    cfg = hf_config(ettin_config(size, vocab_size=VOCAB))
    cfg._attn_implementation = "sdpa"
    model = transformers.ModernBertForMaskedLM(cfg)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    times = []
    for tokens, labelled in batches(warmup + steps, batch, seq):
        labels = torch.where(labelled, tokens, torch.full_like(tokens, -100))
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=tokens, labels=labels).loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def measure(impl: str, size: str, batch: int, seq: int, steps: int, warmup: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    times = (run_ours if impl == "ours" else run_hf)(size, batch, seq, steps, warmup)
    step = statistics.median(times)
    return {"impl": impl, "size": size, "step_s": step, "tokens_per_s": batch * seq / step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=["ours", "hf"])
    p.add_argument("--size", default=None, help="one size (default: tiny and 17m)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    a = p.parse_args()
    if a.impl:
        print(json.dumps(measure(a.impl, a.size or "tiny", a.batch, a.seq_length, a.steps, a.warmup, a.threads)))
        return
    rows = []
    for size in [a.size] if a.size else ["tiny", "17m"]:
        for impl in ("ours", "hf"):
            cmd = [sys.executable, "-W", "ignore", __file__, "--impl", impl, "--size", size,
                   "--batch", str(a.batch), "--seq-length", str(a.seq_length), "--steps", str(a.steps),
                   "--warmup", str(a.warmup), "--threads", str(a.threads)]
            env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    write_results(a, rows)


def write_results(a, rows: list[dict]) -> None:
    by = {(r["size"], r["impl"]): r for r in rows}
    lines = ["## Training on CPU", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"{a.threads} threads, torch {torch.__version__}, Python {platform.python_version()}; "
             f"load average {os.getloadavg()[0]:.1f} at the end (a shared machine: expect +-20%).",
             f"Command: `python -m benchmarks.train_cpu --batch {a.batch} --seq-length {a.seq_length} "
             f"--steps {a.steps} --threads {a.threads}`.",
             f"One step = forward + backward + AdamW step on {a.batch} x {a.seq_length} tokens (fp32, no padding, "
             "30% labelled, vocabulary 50368); median of the timed steps after warm-up.", "",
             "| size | ettin-megatron (Megatron-Core DDP + optimizer) | transformers ModernBertForMaskedLM + AdamW | ratio |",
             "|---|---|---|---|"]
    for size in dict.fromkeys(r["size"] for r in rows):
        ours, hf = by[(size, "ours")], by[(size, "hf")]
        lines.append(f"| {size} | {ours['tokens_per_s']:,.0f} tokens/s | {hf['tokens_per_s']:,.0f} tokens/s | "
                     f"{ours['tokens_per_s'] / hf['tokens_per_s']:.2f}x |")
    section = "\n".join(lines) + "\n"
    path = Path(a.results)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if "## Training on CPU" in text:  # replace our section only
        head, _, rest = text.partition("## Training on CPU")
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        text = head + section + tail.lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
