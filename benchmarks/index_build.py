"""Sample-index build time and peak memory: EttinDataset (each layout) vs megatron-core's GPTDataset.

    python -m benchmarks.index_build --documents 5000000 --workdir /tmp/index_build

Writes a synthetic prefix once (document lengths drawn like web text: log-normal, median ~450
tokens, mean ~840; the .idx with megatron's _IndexWriter, which IndexedDatasetBuilder uses, and the
.bin as a sparse file of the right size: building an index never reads tokens), then builds one
epoch of train samples at --seq-length for each contender in its own subprocess, into an empty
cache directory (both save their indices there), and reports wall and CPU time (this process's
user + system: less sensitive than wall time to other jobs on a shared machine) and peak RSS of the
build (VmHWM, reset to the current RSS just before it), beside the RSS the process had before it
(imports, the mapped .idx). Not ru_maxrss: a child inherits its parent's peak through fork and exec,
so every contender would report the parent's RSS from writing the prefix.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import types

import numpy

CONTENDERS = ("gpt", "document", "packed", "concat")


def write_prefix(prefix: str, documents: int, seed: int = 0) -> None:
    from megatron.core.datasets.indexed_dataset import _IndexWriter

    rng = numpy.random.default_rng(seed)
    lengths = numpy.clip(rng.lognormal(6.1, 1.1, documents), 16, 100_000).astype(numpy.int32)
    with _IndexWriter(prefix + ".idx", numpy.uint16) as writer:
        writer.write(lengths, None, numpy.arange(documents + 1))
    with open(prefix + ".bin", "wb") as data:
        data.truncate(int(lengths.sum(dtype=numpy.int64)) * 2)


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def reset_peak_rss() -> None:
    """Set this process's VmHWM to its current RSS (Linux, /proc/PID/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def build(contender: str, prefix: str, seq_length: int, cache: str) -> dict:
    """One build in this process; returns its numbers."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from ettin_megatron.data.datasets import EttinDatasetConfig, build_datasets

    common = dict(random_seed=21, sequence_length=seq_length, blend=([prefix], None), split="100,0,0",
                  path_to_cache=cache)
    reset_peak_rss()
    before, start, cpu = rss_mb(), time.perf_counter(), time.process_time()
    if contender == "gpt":
        tokenizer = types.SimpleNamespace(vocab_size=50368, eod=50282, pad=50283,
                                          unique_identifiers={"class": "synthetic"})
        config = GPTDatasetConfig(tokenizer=tokenizer, reset_position_ids=False, reset_attention_mask=False,
                                  eod_mask_loss=False, **common)
        dataset = BlendedMegatronDatasetBuilder(GPTDataset, [None, None, None], lambda: True, config).build()[0]
    else:
        dataset = build_datasets(EttinDatasetConfig(layout=contender, **common), [None, None, None])[0]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = rss_mb("VmHWM")
    return dict(contender=contender, samples=len(dataset), seconds=round(seconds, 2), cpu_seconds=round(cpu, 2),
                rss_before_mb=round(before), peak_rss_mb=round(peak), build_mb=round(peak - before),
                index_mb=round(sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache)) / 2**20))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=5_000_000)
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--workdir", default="/tmp/index_build")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--repeats", type=int, default=1,
                        help="builds per contender, round-robin; the fastest is reported, with the median "
                             "beside it (the time of a loaded machine's luckiest run is the closest to an "
                             "idle one's)")
    parser.add_argument("--child", nargs=2, metavar=("CONTENDER", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    prefix = os.path.join(args.workdir, f"synthetic_{args.documents}")
    if args.child:
        print(json.dumps(build(args.child[0], prefix, args.seq_length, args.child[1])))
        return
    os.makedirs(args.workdir, exist_ok=True)
    if not os.path.isfile(prefix + ".idx"):
        write_prefix(prefix, args.documents)
    lengths = numpy.memmap(prefix + ".idx", dtype=numpy.int32, mode="r", offset=34, shape=(args.documents,))
    print(f"{args.documents:,} documents, {int(lengths.sum(dtype=numpy.int64)):,} tokens, seq {args.seq_length}")
    best, times = {}, {contender: [] for contender in args.contenders}
    for _ in range(args.repeats):
        for contender in args.contenders:
            cache = os.path.join(args.workdir, f"cache_{contender}")
            shutil.rmtree(cache, ignore_errors=True)
            child = [sys.executable, __file__, "--documents", str(args.documents), "--seq-length",
                     str(args.seq_length), "--workdir", args.workdir, "--child", contender, cache]
            result = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            shutil.rmtree(cache, ignore_errors=True)
            if args.repeats > 1:
                print(f"  {contender}: {result['seconds']} s ({result['cpu_seconds']} s CPU), {result['build_mb']} MB", flush=True)
            times[contender].append(result["seconds"])
            if contender not in best or result["seconds"] < best[contender]["seconds"]:
                best[contender] = result
    for contender in args.contenders:
        best[contender]["median_seconds"] = float(numpy.median(times[contender]))
        if "gpt" in best:  # the goal: within 1.2x of GPTDataset's time
            best[contender]["vs_gpt"] = round(best[contender]["seconds"] / best["gpt"]["seconds"], 2)
            best[contender]["median_vs_gpt"] = round(best[contender]["median_seconds"] / best["gpt"]["median_seconds"], 2)
        print(json.dumps(best[contender]), flush=True)


if __name__ == "__main__":
    main()
