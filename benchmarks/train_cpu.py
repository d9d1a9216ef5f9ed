"""Training throughput of one step: our stack (Megatron-Core DDP + schedule + optimizer around the
EttinModel, exactly what ettin_megatron.pretrain runs) against transformers' ModernBertForMaskedLM with
torch.optim.AdamW, on the same batches with the same number of threads. Written for the CPU; on a GPU
(``--impl`` runs only) it times the same step there, in BF16 with ``--bf16`` (ours: Megatron's mixed
precision; transformers: autocast), and benchmarks/gpu_check.sh uses it for the comparison on the card.

A step is forward + backward + optimizer step over one batch of ``--batch`` full-length sequences
(no padding, so both process the same tokens; 30% of positions labelled, as MLM phase 1). Each
implementation runs in its own process (our CPU emulation of CUDA is not loaded into the transformers
run). Reported: training tokens/s, median step time over the timed steps after warm-up. ``--impl hf``
also counts one step's FLOPs with torch's FlopCounterMode, a count independent of model/counts.py (the
one our MFU uses). ``--profile FILE`` then runs three more steps under torch.profiler, writes its table
to FILE and reports the seconds per step the device spent in kernels: the rest of the timed step is
host time the device waited through (launches, syncs, Python).

    python -m benchmarks.train_cpu                      # tiny and 17m, 2 threads, writes RESULTS.md
    python -m benchmarks.train_cpu --impl ours --size tiny   # one measurement, JSON on stdout
    python -m benchmarks.train_cpu --impl ours --size 150m --batch 24 --seq-length 1024 --bf16 \
        --optimizer stableadamw --profile profile.txt      # on a GPU
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


def sync() -> None:
    """Wait for the device, so that a clock read after a step sees its kernels finished."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(step, inputs: list, warmup: int) -> list[float]:
    """Seconds of ``step(x)`` per input, the first ``warmup`` dropped."""
    times = []
    for x in inputs:
        sync()
        start = time.perf_counter()
        step(x)
        sync()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def profiled(step, inputs: list, path: str) -> dict:
    """Seconds of device kernels per step (torch.profiler; 0 on the CPU); the table of the ops that took
    the most time goes to ``path``. Wall time is the unprofiled timing's: the profiler slows the host."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for x in inputs:
            step(x)
        sync()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    Path(path).write_text(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                       row_limit=30))
    return {"profile_kernel_s": sum(e.self_device_time_total for e in kernels) / 1e6 / len(inputs)}  # from us


def ours_step(size: str, batch: int, seq: int, bf16: bool, optimizer_name: str):
    """Our training step and a function turning (tokens, labelled) into its micro-batch. The attention
    backend is pretrain's default (auto: sdpa on the CPU, flex or better on a GPU)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from ettin_megatron.data.batches import collate
    from ettin_megatron.runtime import ParallelLayout, device, initialize
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.forward_step import make_forward_step
    from ettin_megatron.training.optimizer import build_optimizer
    from ettin_megatron.training.plan import plan_model
    from ettin_megatron.training.setup import build_model, build_model_config, wire_schedule_hooks

    args = make_arguments(model_size=size, vocab_size=VOCAB, seq_length=seq, micro_batch_size=batch,
                          global_batch_size=batch, attention_output_dropout=0.0, spec="local",
                          attention_backend="auto", weight_decay=0.01, clip_grad=0.0, bf16=bf16,
                          optimizer=optimizer_name)
    initialize(ParallelLayout(), seed=0)
    config = build_model_config(plan_model(args))
    model = build_model(args, config)
    optimizer = build_optimizer(args, model)
    wire_schedule_hooks(config, model, optimizer, args)
    forward_backward, step_fn = get_forward_backward_func(), make_forward_step(device(), config)

    def prepare(tokens, labelled):
        return collate([{"tokens": t.numpy(), "labels": (t * m).numpy(), "loss_mask": m.float().numpy(),
                         "segment_lengths": [seq]} for t, m in zip(tokens, labelled)])

    def step(micro):
        for chunk in model:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        forward_backward(forward_step_func=step_fn, data_iterator=iter([micro]), model=model, num_microbatches=1,
                         seq_length=seq, micro_batch_size=1, forward_only=False)
        optimizer.step()

    return step, prepare


def hf_step(size: str, bf16: bool):
    """transformers' training step (AdamW, BF16 autocast with ``bf16``), the function turning (tokens,
    labelled) into its inputs, and one that counts a step's FLOPs per token (FlopCounterMode)."""
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    from ettin_megatron.config import ettin_config
    from ettin_megatron.convert.hf_mapping import hf_config

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = hf_config(ettin_config(size, vocab_size=VOCAB))
    cfg._attn_implementation = "sdpa"
    model = transformers.ModernBertForMaskedLM(cfg).to(dev)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)

    def prepare(tokens, labelled):
        return tokens.to(dev), torch.where(labelled, tokens, torch.full_like(tokens, -100)).to(dev)

    def forward_backward(inputs):
        with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
            loss = model(input_ids=inputs[0], labels=inputs[1]).loss
        loss.backward()

    def step(inputs):
        optimizer.zero_grad(set_to_none=True)
        forward_backward(inputs)
        optimizer.step()

    def flops_per_token(inputs) -> float:
        with FlopCounterMode(display=False) as counter:
            forward_backward(inputs)
        optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops() / inputs[0].numel()

    return step, prepare, flops_per_token


def measure(impl: str, size: str, batch: int, seq: int, steps: int, warmup: int, threads: int,
            bf16: bool = False, optimizer: str = "adam", profile: str | None = None) -> dict:
    torch.set_num_threads(threads)
    if impl == "ours":
        step, prepare = ours_step(size, batch, seq, bf16, optimizer)
    else:
        step, prepare, flops_per_token = hf_step(size, bf16)
    inputs = [prepare(tokens, labelled) for tokens, labelled in batches(warmup + steps, batch, seq)]
    step_s = statistics.median(timed(step, inputs, warmup))
    row = {"impl": impl, "size": size, "batch": batch, "seq": seq, "bf16": bf16, "step_s": step_s,
           "tokens_per_s": batch * seq / step_s}
    if impl == "hf":
        row["flops_per_token"] = flops_per_token(inputs[0])
    if profile:
        row.update(profiled(step, inputs[:3], profile))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=["ours", "hf"])
    p.add_argument("--size", default=None, help="one size (default: tiny and 17m)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="BF16 mixed precision (--impl runs)")
    p.add_argument("--optimizer", default="adam", choices=("adam", "stableadamw"), help="ours (--impl runs)")
    p.add_argument("--profile", default=None, help="FILE: profile three more steps, the op table to FILE")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    a = p.parse_args()
    if a.impl:
        print(json.dumps(measure(a.impl, a.size or "tiny", a.batch, a.seq_length, a.steps, a.warmup, a.threads,
                                 a.bf16, a.optimizer, a.profile)))
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
