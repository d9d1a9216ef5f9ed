"""Preprocessing throughput and peak memory: ettin's pipeline against one-document-at-a-time baselines.

Baselines tokenize one document per call in a multiprocessing Pool, the way Megatron-LM's
tools/preprocess_data.py works (Pool.imap over the lines, chunksize 32, IndexedDatasetBuilder in the
main process):
- `megatron-lm`: megatron-core's HuggingFaceTokenizer.text_to_ids, what Megatron-LM's tool calls with
  --tokenizer-type HuggingFaceTokenizer (transformers tokenize, then convert_tokens_to_ids);
- `one-doc`: the same loop calling the Rust tokenizer directly (a stronger baseline).
Baselines build their tokenizer before the clock starts and the workers inherit it by fork (Megatron-LM
builds it in each worker), which only flatters them.
`ettin` is ettin_megatron.prep.preprocess (batched, chunked, ordered). Each configuration runs in a
fresh process; we sample the proportional set size (PSS) of its whole process tree for peak memory
(PSS splits pages shared by forked workers, so the sum is not inflated). Throughput is the best of
--repeats interleaved runs, timed inside the process (interpreter start-up excluded, pool start-up
and tokenizer loading included); "tokens per CPU-s" divides by the CPU time of the process tree,
which stays meaningful when other jobs share the machine.

The "ceiling" line measures the Rust tokenizer alone (encode_batch_fast over the texts already in
memory, one thread, in this process): no pipeline built on this tokenizer can exceed that many tokens
per CPU-second, so it tells how much any further pipeline work could still gain.

    python -m benchmarks.preprocess --tokenizer-model MODERNBERT_DIR                 # 2 workers
    python -m benchmarks.preprocess --tokenizer-model DIR --workers 1 2 --scales 1 4
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("megatron-lm", "one-doc", "ettin")


# ---------------------------------------------------------------- one measured run (child process)

_ENCODE = {}


def setup_baseline(method: str, tokenizer_dir: str) -> None:
    if method == "megatron-lm":
        from megatron.core.tokenizers.text.libraries.huggingface_tokenizer import (
            HuggingFaceTokenizer,
        )

        _ENCODE["fn"] = HuggingFaceTokenizer(tokenizer_dir).text_to_ids
    else:
        from ettin_megatron.data.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_dir)
        _ENCODE["fn"] = lambda text: tok.encode(text).ids


def _encode_line(line: str):
    text = json.loads(line)["text"]
    return _ENCODE["fn"](text), len(line)


def run_baseline(method: str, args) -> dict:
    import multiprocessing

    import numpy as np
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from ettin_megatron.vocab import MODERNBERT_IDS

    builder = IndexedDatasetBuilder(args.output + ".bin", dtype=DType.optimal_dtype(MODERNBERT_IDS.vocab_size))
    documents = tokens = nbytes = 0
    with open(args.input, encoding="utf-8") as fin, multiprocessing.Pool(args.workers) as pool:
        for ids, size in pool.imap(_encode_line, fin, 32):
            if ids:
                builder.add_document(np.array(ids), [len(ids)])
            documents, tokens, nbytes = documents + 1, tokens + len(ids), nbytes + size
    builder.finalize(args.output + ".idx")
    return {"documents": documents, "tokens": tokens, "bytes": nbytes}


def run_ettin(args) -> dict:
    from ettin_megatron.prep.preprocess import PreprocessConfig, preprocess

    summary = preprocess(PreprocessConfig(input=args.input, output_prefix=args.output,
                                          tokenizer_model=args.tokenizer_model,
                                          workers=args.workers, log_interval=0))
    return {"documents": summary.documents, "tokens": summary.tokens, "bytes": summary.input_bytes}


def tokenizer_ceiling(corpus: str, tokenizer_dir: str, repeats: int) -> float:
    """Tokens per CPU-s of the bare Rust tokenizer on the corpus (best of `repeats`)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread, like each worker
    from ettin_megatron.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        tokens = sum(len(e.ids) for e in tokenizer.encode_batch_fast(texts))
        best = min(best, time.process_time() - start)
    return tokens / best


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the pool workers, once joined)."""
    return sum(r.ru_utime + r.ru_stime for r in
               (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def child(args) -> None:
    import megatron.core.datasets.indexed_dataset  # noqa: F401  (import cost is not throughput)

    args.workers = args.workers[0]
    if args.run != "ettin":
        setup_baseline(args.run, args.tokenizer_model)
    start, cpu = time.perf_counter(), cpu_seconds()
    result = run_ettin(args) if args.run == "ettin" else run_baseline(args.run, args)
    result["seconds"], result["cpu"] = time.perf_counter() - start, cpu_seconds() - cpu
    print(json.dumps(result))


# ---------------------------------------------------------------- driver

def tree_pss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(method: str, corpus: str, workers: int, tokenizer: str, work: str) -> dict:
    return run_measured([sys.executable, __file__, "--run", method, "--input", corpus, "--workers", str(workers),
                         "--tokenizer-model", tokenizer, "--output", os.path.join(work, f"out_{method}")])


def run_measured(cmd: list) -> dict:
    """Run `cmd`, sampling the PSS of its process tree; return its last stdout line (JSON) + peak_pss."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_pss(watched))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_pss": peak}


def make_corpora(work: str, scales) -> dict:
    from ettin_megatron.prep.sample_corpus import build_sample_corpus

    base = os.path.join(work, "sample.jsonl")
    build_sample_corpus(base)
    data = open(base, "rb").read()
    paths = {}
    for scale in scales:
        paths[scale] = os.path.join(work, f"sample_x{scale}.jsonl")
        with open(paths[scale], "wb") as f:
            f.write(data * scale)
    return paths


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer-model", required=True, help="the ModernBERT tokenizer's directory (tokenizer.json)")
    p.add_argument("--workers", type=int, nargs="+", default=[2])
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--run", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run:
        return child(args)
    if not os.path.isfile(os.path.join(args.tokenizer_model, "tokenizer.json")):
        sys.exit(f"no tokenizer.json in {args.tokenizer_model}; pass --tokenizer-model")
    with tempfile.TemporaryDirectory() as work:
        corpora = make_corpora(work, args.scales)
        print(f"corpus: {os.path.getsize(corpora[1]) / 1e6:.2f} MB x {args.scales}, "
              f"tokenizer {os.path.abspath(args.tokenizer_model)}, {os.cpu_count()} CPUs")
        ceiling = tokenizer_ceiling(corpora[1], args.tokenizer_model, args.repeats)
        print(f"ceiling: the Rust tokenizer alone does {ceiling:,.0f} tokens per CPU-s")
        print("| method | workers | corpus | MB/s | tokens/s | docs/s | tokens per CPU-s "
              "| peak PSS (MB) |")
        print("|---|---|---|---|---|---|---|---|")
        for workers in args.workers:
            for scale in args.scales:
                runs = {method: [] for method in args.methods}
                for _ in range(args.repeats):  # interleaved, so load from elsewhere hits all alike
                    for method in args.methods:
                        runs[method].append(
                            measure(method, corpora[scale], workers, args.tokenizer_model, work))
                for method, results in runs.items():
                    print(row(method, workers, scale, results), flush=True)


def row(method: str, workers: int, scale: int, results: list) -> str:
    """A table row: throughput of the fastest run, CPU efficiency of the leanest, peak memory."""
    fast = min(results, key=lambda r: r["seconds"])
    lean = min(results, key=lambda r: r["cpu"])
    secs = fast["seconds"]
    return (f"| {method} | {workers} | {scale}x | {fast['bytes'] / secs / 1e6:.2f} | "
            f"{fast['tokens'] / secs:,.0f} | {fast['documents'] / secs:,.0f} | "
            f"{lean['tokens'] / lean['cpu']:,.0f} | "
            f"{max(r['peak_pss'] for r in results) / 1e6:.0f} |")


if __name__ == "__main__":
    main()
