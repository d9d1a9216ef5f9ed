"""Token ids copied per second from zstd MDS shards into an indexed dataset, and peak memory.

The corpus is written by tests/prep/mds_writer.py (which rewrites the reference MDSWriter's shards
byte for byte): `input_ids` as ndarray:uint32 plus an `id` str column, as in Ettin's release, zstd,
64 MiB shards (MDSWriter's default size limit; --shard-mb), sha1 hashes (so their verification is in the cost),
samples of 64-2047 tokens with Zipf-distributed ids (compressible like text, not like noise). The
tokenizer is a word-level one with ModernBERT's ids (the vocabulary check is what costs, not
the tokenizer). Each run is a fresh `tools/preprocess_data.py`-equivalent process; we report the
fastest of --repeats runs, tokens per CPU-second of the whole process tree (the per-core figure, which
stays meaningful on a shared machine) and the peak proportional set size of the tree.

    python -m benchmarks.mds_copy                      # 20M and 80M tokens, 1 and 2 workers
    python -m benchmarks.mds_copy --tokens 50000000 --scales 1 --workers 4
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.preprocess import cpu_seconds, run_measured
from ettin_megatron.vocab import MODERNBERT_IDS as IDS
from tests.prep.mds_writer import id_tokenizer, write_mds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_corpus(out: str, tokens: int, shard_bytes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)

    def rows():
        written = 0
        while written < tokens:
            ids = np.minimum(rng.zipf(1.1, int(rng.integers(64, 2048))), IDS.unk - 1).astype(np.uint32)
            written += len(ids)
            yield {"input_ids": ids, "id": str(written)}

    write_mds(out, {"input_ids": "ndarray:uint32", "id": "str"}, rows(), compression="zstd", hashes=["sha1"],
              size_limit=shard_bytes)


def child(args) -> None:
    from ettin_megatron.prep.preprocess import PreprocessConfig, preprocess

    start, cpu = time.perf_counter(), cpu_seconds()
    summary = preprocess(PreprocessConfig(input=args.input, output_prefix=args.output, json_keys=["input_ids"],
                                          tokenizer_model=args.tokenizer_model, workers=args.workers,
                                          log_interval=0))
    print(json.dumps({"tokens": summary.tokens, "documents": summary.documents,
                      "seconds": time.perf_counter() - start, "cpu": cpu_seconds() - cpu}))


def measure(corpus: str, workers: int, tokenizer: str, work: str) -> dict:
    return run_measured([sys.executable, __file__, "--run", "--input", corpus, "--workers", str(workers),
                         "--tokenizer-model", tokenizer, "--output", os.path.join(work, "out")])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=20_000_000, help="corpus size at scale 1")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--shard-mb", type=int, default=64, help="shard size limit (MiB; MDSWriter's default: 64)")
    p.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer-model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run:
        args.workers = args.workers[0]
        return child(args)
    with tempfile.TemporaryDirectory() as work:
        tokenizer = id_tokenizer(os.path.join(work, "tok"), IDS.vocab_size, IDS.cls, IDS.sep)
        corpora = {}
        for scale in args.scales:
            corpora[scale] = os.path.join(work, f"x{scale}")
            make_corpus(corpora[scale], args.tokens * scale, args.shard_mb << 20)
            size = sum(os.path.getsize(os.path.join(corpora[scale], f)) for f in os.listdir(corpora[scale]))
            shards = len(os.listdir(corpora[scale])) - 1
            print(f"corpus x{scale}: {size / 1e6:.0f} MB in {shards} zstd shards", flush=True)
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print("| workers | corpus | tokens | tokens/s | tokens per CPU-s | peak PSS (MB) |")
        print("|---|---|---|---|---|---|")
        for workers in args.workers:
            for scale in args.scales:
                runs = [measure(corpora[scale], workers, tokenizer, work) for _ in range(args.repeats)]
                fast, lean = min(runs, key=lambda r: r["seconds"]), min(runs, key=lambda r: r["cpu"])
                print(f"| {workers} | {scale}x | {fast['tokens']:,} | {fast['tokens'] / fast['seconds']:,.0f} | "
                      f"{lean['tokens'] / lean['cpu']:,.0f} | {max(r['peak_pss'] for r in runs) / 1e6:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
