"""Micro-batches read ahead by DataLoader workers: the same batches as in-process reading (and as
Megatron-LM's per-step sampling rule), one-line errors from a worker, workers that leave stop requests to
their rank, and a training step whose host waits for the device do not grow with its micro-batches or
documents."""

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy
import psutil
import pytest
import torch

from ettin_megatron.data.batches import collate
from ettin_megatron.data.datasets import EttinDatasetConfig, build_datasets
from ettin_megatron.errors import SampleError
from ettin_megatron.training.data_loader import MicroBatchSampler, micro_batch_loader, step_iterators
from tests.ranks import run_ranks
from tests.training.training_data import SPECIAL, VOCAB, base_args, pretrain_error, write_corpus

MICRO, DP = 2, 2
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    prefix = write_corpus(tmp_path_factory.mktemp("loader"), num_docs=120)
    config = EttinDatasetConfig(random_seed=21, sequence_length=32, blend=([prefix], None), split="100,0,0",
                                layout="packed", **SPECIAL)
    return build_datasets(config, [200, None, None])[0]


def reference_step(dataset, consumed, num_micro, dp_rank):
    """Megatron-LM's rule, step by step: the global batch [consumed, consumed + gbs) in micro-batches
    of MICRO x DP consecutive samples, of which DP rank r takes the r-th slice."""
    for k in range(num_micro):
        start = consumed + (k * DP + dp_rank) * MICRO
        yield collate([dataset[(start + j) % len(dataset)] for j in range(MICRO)])


def same_batch(a, b):
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_gives_megatrons_batches_through_a_batch_size_rampup(dataset, num_workers):
    steps = [1, 1, 2, 3, 4, 4, 4]  # micro-batches per step, as a ramp-up 4 -> 16 samples would give
    for dp_rank in range(DP):
        consumed = 24  # a resumed run: the stream starts at the checkpoint's data position
        loader = micro_batch_loader(dataset, MicroBatchSampler(len(dataset), consumed, MICRO, dp_rank, DP), num_workers)
        batches = iter(loader)
        for num_micro in steps:
            got = list(step_iterators(batches, num_micro, num_chunks=1))
            want = list(reference_step(dataset, consumed, num_micro, dp_rank))
            assert len(got) == num_micro and all(map(same_batch, got, want)), (dp_rank, consumed)
            consumed += num_micro * MICRO * DP


def test_virtual_pipeline_chunks_read_the_same_micro_batches(dataset):
    batches = iter(micro_batch_loader(dataset, MicroBatchSampler(len(dataset), 0, MICRO, 0, DP), 0))
    first, second = step_iterators(batches, 3, num_chunks=2)
    a, b = list(first), list(second)
    assert len(a) == 3 and all(map(same_batch, a, b))
    assert same_batch(next(batches), next(reference_step(dataset, 3 * MICRO * DP, 1, 0)))


class _Corrupt(torch.utils.data.Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, index):
        if index == 13:
            raise ValueError("buffer is smaller than requested size\n(and a second line)")
        return {"tokens": numpy.ones(4, numpy.int64), "labels": numpy.zeros(4, numpy.int64),
                "loss_mask": numpy.zeros(4, numpy.float32), "segment_lengths": numpy.array([4])}


_READER = """
import sys
from pathlib import Path
from tests.training.test_data_loader import _Corrupt
from ettin_megatron.training.data_loader import MicroBatchSampler, micro_batch_loader

batches = iter(micro_batch_loader(_Corrupt(), MicroBatchSampler(100, 14, 4, 0, 1), 2))
next(batches)
print("reading", flush=True)
sys.stdin.readline()
for _ in range(10):
    next(batches)
print("read", flush=True)
raise RuntimeError("the rank fails with its workers alive")
"""


@pytest.mark.timeout(120)
def test_workers_ignore_stop_requests_from_others_and_end_with_their_rank():
    """SIGTERM and SIGINT sent to the workers by another process (torchrun and SLURM signal them with their
    rank) leave them reading; a rank that then dies of an error still exits, its workers with it."""
    reader = subprocess.Popen([sys.executable, "-c", _READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert reader.stdout.readline() == "reading\n", reader.communicate()
    workers = psutil.Process(reader.pid).children()
    assert len(workers) == 2
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        worker.send_signal(signal.SIGINT)
    out, err = reader.communicate("go\n", timeout=60)
    assert out == "read\n" and err.strip().endswith("RuntimeError: the rank fails with its workers alive"), err
    assert reader.returncode == 1 and not any(worker.is_running() for worker in workers)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_failing_sample_stops_reading_with_one_line(num_workers):
    batches = iter(micro_batch_loader(_Corrupt(), MicroBatchSampler(100, 0, 4, 0, 1), num_workers))
    with pytest.raises(SampleError) as raised:
        for _ in range(10):
            next(batches)
    message = str(raised.value)
    assert message == ("sample 13 of the training data could not be read: ValueError: buffer is smaller "
                       "than requested size (and a second line)"), message


def _train_until_error(rank, prefix, poisoned):
    """Train with sample ``poisoned`` of the dataset failing to read, as a corrupt record would."""
    from ettin_megatron.data.datasets import EttinDataset
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    read = EttinDataset.__getitem__

    def corrupt(self, index):
        if index == poisoned:
            raise ValueError(f"bad record at byte {index * 1000}\n(a second line)")
        return read(self, index)

    EttinDataset.__getitem__ = corrupt  # the forked workers inherit it
    args = make_arguments(**base_args(prefix, train_iters=30, num_workers=2))
    try:
        pretrain(args)
    except SampleError as error:
        return str(error)
    return None


@pytest.mark.timeout(300)
def test_a_corrupt_sample_ends_the_run_with_one_line(tmp_path):
    """A sample that fails in a worker stops the run with that one line (pretrain's CLI prints it and
    exits 2), not a traceback or a hang."""
    (message,) = run_ranks(1, _train_until_error, write_corpus(tmp_path, num_docs=60), 21)
    assert message == ("sample 21 of the training data could not be read: ValueError: bad record at byte "
                       "21000 (a second line)"), message


def test_a_truncated_bin_is_refused_before_training(tmp_path, capsys, tokenizer_dir):
    """A .bin cut short after its index was written would fail mid-run: refused at start, one line."""
    prefix = write_corpus(tmp_path, num_docs=60)
    with open(prefix + ".bin", "r+b") as data:
        data.truncate(os.path.getsize(prefix + ".bin") - 6)
    line = pretrain_error(capsys, ["--tokenizer-model", tokenizer_dir, "--vocab-size", str(VOCAB),
                                   "--data-path", prefix, "--train-iters", "2"])
    assert "is truncated or its two files do not belong together" in line, line


# Host waits for the device: every way a tensor's values reach Python, and an explicit synchronize.
_READS = ("item", "tolist", "cpu", "numpy")


def _count_host_reads(rank, prefix, settings):
    """Host reads per training step (the second; the first also builds things) for each setting."""
    from ettin_megatron.training import loop
    from ettin_megatron.training.arguments import make_arguments

    counts, current = {}, collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in _READS}

    def counting(name):
        def read(self, *args, **kwargs):
            current[name] += 1
            return originals[name](self, *args, **kwargs)
        return read

    real_step, real_sync = loop.train_step, torch.cuda.synchronize
    steps = []

    def step(*args):
        current.clear()
        for name in _READS:
            setattr(torch.Tensor, name, counting(name))
        torch.cuda.synchronize = lambda *a, **k: current.update(["synchronize"])
        try:
            return real_step(*args)
        finally:
            for name in _READS:
                setattr(torch.Tensor, name, originals[name])
            torch.cuda.synchronize = real_sync
            steps.append(dict(current))

    loop.train_step = step
    try:
        for name, overrides in settings.items():
            steps.clear()
            loop.pretrain(make_arguments(**base_args(prefix, train_iters=2, num_workers=2, **overrides)))
            counts[name] = steps[1]
    finally:
        loop.train_step = real_step
    return counts


@pytest.mark.timeout(900)
def test_host_reads_per_step_do_not_grow_with_micro_batches_or_documents(tmp_path):
    prefix = write_corpus(tmp_path, num_docs=300, min_len=6, max_len=12)
    settings = {
        "1 micro-batch, few documents": dict(global_batch_size=2, data_layout="document"),
        "8 micro-batches, few documents": dict(global_batch_size=16, data_layout="document"),
        "8 micro-batches, many documents": dict(global_batch_size=16, data_layout="packed", seq_length=128),
    }
    (counts,) = run_ranks(1, _count_host_reads, prefix, settings, timeout=900)
    first = next(iter(counts.values()))
    assert all(count == first for count in counts.values()), counts


def test_a_worker_ships_each_micro_batch_in_one_storage(dataset):
    """Each tensor a worker sends costs a descriptor round trip with it: a micro-batch arrives as views
    of one storage, equal to the in-process batch."""
    sampler = MicroBatchSampler(len(dataset), 0, MICRO, 0, DP, count=3)
    for got, want in zip(micro_batch_loader(dataset, sampler, 2), micro_batch_loader(dataset, sampler, 0)):
        storages = {value.untyped_storage().data_ptr() for value in got.values() if torch.is_tensor(value)}
        assert same_batch(got, want) and len(storages) == 1, storages
