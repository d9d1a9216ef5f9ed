"""Digests of the first micro-batches the training loader delivers, for every layout x objective, train and
valid split, 0 and 2 workers, two DP ranks, a resumed start and sequence-parallel padding: run it before
and after a change to the data pipeline and diff the outputs, which must be identical (what the model sees
must not change with a speed-up). Seq 128 reads a weighted blend of the prefix with itself for `packed`.

    python -m benchmarks.batch_digests --data-path <prefix> > before.txt   # on main
    python -m benchmarks.batch_digests --data-path <prefix> > after.txt    # on the change; diff them
"""

from __future__ import annotations

import argparse
import contextlib
import io

from ettin_megatron.data.batches import batch_digest
from ettin_megatron.data.datasets import LAYOUTS, EttinDatasetConfig, build_datasets
from ettin_megatron.data.objectives import OBJECTIVES
from ettin_megatron.training.data_loader import MicroBatchSampler, micro_batch_loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", required=True, help="an IndexedDataset prefix (tools/preprocess_data.py)")
    parser.add_argument("--micro-batches", type=int, default=6, help="per configuration")
    args = parser.parse_args()
    for layout in LAYOUTS:
        for objective in OBJECTIVES:
            for seq, micro in ((1024, 8), (128, 16)):
                blend = ([args.data_path] * 2, [0.3, 0.7]) if (seq, layout) == (128, "packed") else ([args.data_path], None)
                config = EttinDatasetConfig(random_seed=21, sequence_length=seq, blend=blend, split="90,10,0",
                                            layout=layout, objective=objective)
                with contextlib.redirect_stdout(io.StringIO()):  # the datasets' one-line reports
                    splits = build_datasets(config, [400, 50, 0])[:2]
                for split, dataset in zip(("train", "valid"), splits):
                    for workers in (0, 2):
                        for rank, start, pad in ((0, 0, 1), (1, 0, 1), (0, 37, 4)):
                            sampler = MicroBatchSampler(len(dataset), start, micro, rank, 2, args.micro_batches)
                            digests = [batch_digest(b) for b in micro_batch_loader(dataset, sampler, workers, pad)]
                            print(f"{layout} {objective} seq {seq} {split} workers {workers} rank {rank} start {start} "
                                  f"pad {pad}: {' '.join(digests)}", flush=True)


if __name__ == "__main__":
    main()
