"""Data pipeline throughput per rank: micro-batches delivered by the training loader (data_loader.py)
with 0, 1 and 2 worker processes, for the `document` and `packed` MLM layouts at seq 1024 and 7999;
and the tiny model's training step time with 0 vs 2 workers.

The corpus is the offline sample corpus (CPython's docs) tokenized with the ModernBERT tokenizer
(``--tokenizer``), or any prefix given with ``--data-path``. Micro-batches hold Ettin's 17m phase-1
micro-batch of 144 x 1024 tokens (18 samples at 7999). Delivered tokens/s counts input tokens of the
micro-batches the loop receives, from the first request (worker start-up included) to the last.

    python -m benchmarks.data_pipeline --tokenizer MODERNBERT_DIR   # writes a table
    python -m benchmarks.data_pipeline --data-path data/sample_text_document --seconds 5
    python -m benchmarks.data_pipeline --data-path PREFIX --seq-lengths 1024 --workers 2 --steps 0  # GPU check
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from ettin_megatron.data.datasets import EttinDatasetConfig, build_datasets
from ettin_megatron.training.data_loader import MicroBatchSampler, micro_batch_loader

TOKENS_PER_MICRO_BATCH = 144 * 1024


def sample_prefix(tokenizer: str, workdir: str) -> str:
    """The sample corpus preprocessed with ``tokenizer`` (tools/preprocess_data.py, as users run it)."""
    from ettin_megatron.prep.sample_corpus import build_sample_corpus

    corpus, prefix = os.path.join(workdir, "corpus.jsonl"), os.path.join(workdir, "sample")
    build_sample_corpus(corpus)
    subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", corpus, "--output-prefix", prefix,
                    "--tokenizer-model", tokenizer, "--workers", "1"], check=True, stdout=subprocess.DEVNULL)
    return prefix


def delivered_tokens_per_s(prefix: str, layout: str, seq: int, workers: int, seconds: float) -> float:
    config = EttinDatasetConfig(random_seed=21, sequence_length=seq, blend=([prefix], None), split="100,0,0",
                                layout=layout, objective="mlm")
    dataset = build_datasets(config, [None, None, None])[0]
    micro = max(1, TOKENS_PER_MICRO_BATCH // seq)
    batches = iter(micro_batch_loader(dataset, MicroBatchSampler(len(dataset), 0, micro, 0, 1), workers))
    start, tokens = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        tokens += next(batches)["tokens"].numel()
    return tokens / (time.perf_counter() - start)


def step_seconds(prefix: str, workers: int, steps: int) -> float:
    """Median wall time of the tiny model's training steps (a torchrun-less single rank), from its log."""
    port = str(29500 + os.getpid() % 1000 + workers)
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    argv = [sys.executable, "-m", "ettin_megatron.pretrain", "--model-size", "tiny", "--data-path", prefix,
            "--seq-length", "1024", "--micro-batch-size", "16",
            "--global-batch-size", "64", "--train-iters", str(steps), "--log-interval", "1", "--eval-iters", "0",
            "--data-layout", "packed", "--lr-warmup-iters", "2", "--num-workers", str(workers)]
    log = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    rates = [float(r.replace(",", "")) for r in re.findall(r"tokens/s ([\d,]+)", log)][2:]  # after warm-up
    return 64 * 1024 / statistics.median(rates) if rates else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", help="the ModernBERT tokenizer's directory (with the sample corpus)")
    parser.add_argument("--data-path", help="an existing prefix (default: the sample corpus)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--steps", type=int, default=8, help="training steps per step-time measurement "
                        "(0: no step-time measurement)")
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[1024, 7999])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        if not (args.data_path or args.tokenizer):
            parser.error("pass --tokenizer (to preprocess the sample corpus with it) or --data-path")
        prefix = args.data_path or sample_prefix(args.tokenizer, workdir)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
              f"torch {torch.__version__}, Python {platform.python_version()}")
        print("| layout | seq | micro-batch | workers | delivered tokens/s |\n|---|---|---|---|---|")
        for layout in ("document", "packed"):
            for seq in args.seq_lengths:
                for workers in args.workers:
                    rate = delivered_tokens_per_s(prefix, layout, seq, workers, args.seconds)
                    print(f"| {layout} | {seq} | {max(1, TOKENS_PER_MICRO_BATCH // seq)} | {workers} | {rate:,.0f} |",
                          flush=True)
        if not args.steps:
            return
        print("\n| tiny model, seq 1024, 64 x 1024-token steps | workers | median step (s) |\n|---|---|---|")
        for workers in (0, 2):
            print(f"| packed MLM | {workers} | {step_seconds(prefix, workers, args.steps):.3f} |", flush=True)


if __name__ == "__main__":
    main()
