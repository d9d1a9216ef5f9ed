"""What training's launch-time data check costs per prefix (data/dataset_info.check_dataset).

Writes a synthetic prefix of --tokens uint16 tokens (documents of 4,096 tokens, as megatron's builder
does), then times, on the same files: the check with a record beside the prefix (reads its JSON and
the index header), the check without one (Megatron-LM's tool: the sampled largest id), and a full
scan of the .bin in 16M-token slices (what the sample avoids), each the best of --repeats. The page
cache is warm after writing, so the times are CPU-bound lower bounds; the sample reads at most 32 MB
from disk whatever the corpus size, a full scan reads all of it.

    python -m benchmarks.dataset_check --tokens 1000000000 --dir /tmp/check
"""

import argparse
import os
import time

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from ettin_megatron.data.dataset_info import DatasetInfo, TokenizerStamp, check_dataset, info_path, write_info

DOCUMENT = 4096


def write_prefix(prefix: str, tokens: int) -> None:
    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    block = rng.integers(0, 50_000, 1 << 22, dtype=np.uint16)  # 4M tokens reused
    for start in range(0, tokens, DOCUMENT):
        offset = start % (len(block) - DOCUMENT)
        builder.add_document(block[offset : offset + min(DOCUMENT, tokens - start)], [min(DOCUMENT, tokens - start)])
    builder.finalize(prefix + ".idx")


def full_scan(prefix: str) -> int:
    tokens = np.memmap(prefix + ".bin", dtype=np.uint16, mode="r")
    step = 1 << 24
    return max(int(tokens[i : i + step].max()) for i in range(0, len(tokens), step))


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000_000)
    parser.add_argument("--dir", default="/tmp/dataset_check")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    prefix = os.path.join(args.dir, "synthetic")
    start = time.perf_counter()
    write_prefix(prefix, args.tokens)
    print(f"wrote {args.tokens:,} tokens ({os.path.getsize(prefix + '.bin') / 1e9:.2f} GB) in "
          f"{time.perf_counter() - start:.1f}s")
    dataset = IndexedDataset(prefix)
    stamp = TokenizerStamp("0" * 64, 50_368)
    check = lambda: check_dataset(prefix, IndexedDataset(prefix), 50_368, stamp, "--tokenizer-model X")  # noqa: E731
    print(f"without a record (sampled max id): {best(check, args.repeats) * 1e3:.1f} ms")
    record = DatasetInfo(stamp, {}, "document", "benchmark", documents=len(dataset.document_indices) - 1,
                         sequences=len(dataset), tokens=args.tokens, max_token_id=49_999)
    write_info(info_path(prefix), record)
    print(f"with a record: {best(check, args.repeats) * 1e3:.1f} ms")
    os.remove(info_path(prefix))
    print(f"full scan of the .bin: {best(lambda: full_scan(prefix), args.repeats) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
