"""Micro-batches read ahead of the step: torch's DataLoader over the Ettin datasets.

Which samples a rank reads is a pure function of the data position, exactly as Megatron-LM's
MegatronPretrainingSampler: a step's global batch is samples [consumed, consumed + global_batch),
cut into micro-batches of ``micro_batch_size x DP`` consecutive samples, of which data-parallel rank r
takes the r-th slice. Every global batch (also during a batch-size ramp-up) is a whole number of such
slices, so rank r's micro-batches form one stream that does not depend on where steps begin:
micro-batch m holds samples ``start + (m x DP + r) x micro_batch_size + [0, micro_batch_size)``. The
loop takes as many micro-batches from the stream as the step has; a resumed run, or a run at another
TP / PP, reads the same samples in the same steps.

That stream is a ``batch_sampler``, so torch's DataLoader can read and collate it in worker processes
(``--num-workers``), with pinned memory on a GPU machine and a bounded read-ahead of
``prefetch_factor`` micro-batches per worker, in order. Workers start once per run; ``--num-workers 0``
reads in the training process.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from functools import partial
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.batches import collate
from ..errors import SampleError
from ..vocab import MODERNBERT_IDS

PREFETCH_FACTOR = 4
"""Micro-batches each worker may hold ready: enough to cover a step's tail while the next begins."""


STOP_REQUESTS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
"""The signals launchers and schedulers send to ask a job to stop: torchrun forwards them to each rank's
whole process group, SLURM's scancel and preemption signal every process of the job, a terminal's Ctrl-C
reaches the foreground group. Loader workers leave them to their rank, which decides (finish the step,
save, exit; training/stopping.py) and then ends its workers. A worker killed instead (torch's own SIGTERM
handler does that) would crash its rank at the next read, and the preempted run would save nothing."""


def _leave_stop_requests_to_the_rank(worker_id: int) -> None:
    """DataLoader's worker_init_fn: ignore STOP_REQUESTS in this worker, except a SIGTERM from the rank itself.

    The rank sends SIGTERM when it ends a worker that does not stop by itself (torch's loader shutdown,
    multiprocessing's exit): that one must still end it, or the rank would wait for it forever. Which
    process sent a signal only shows to a thread that waits for it (sigwaitinfo), so SIGTERM is blocked
    here and such a thread takes it. A worker also ends when its rank dies (torch's worker watchdog)."""
    for request in STOP_REQUESTS:
        if request != signal.SIGTERM:
            signal.signal(request, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_end_on_sigterm_from, args=(os.getppid(),), daemon=True).start()


def _end_on_sigterm_from(rank: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != rank:
        pass
    os._exit(0)


class MicroBatchSampler(Sampler):
    """The sample indices of one data-parallel rank's micro-batches, in training order (module doc).

    Yields ``count`` micro-batches, or without end when ``count`` is None; indices wrap around the
    dataset's length as Megatron-LM's do."""

    def __init__(self, num_samples: int, start: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                 count: int | None = None):
        self.num_samples, self.start, self.count = num_samples, start, count
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size

    def __iter__(self) -> Iterator[list[int]]:
        for m in itertools.count() if self.count is None else range(self.count):
            first = self.start + (m * self.dp_size + self.dp_rank) * self.micro_batch_size
            yield [(first + j) % self.num_samples for j in range(self.micro_batch_size)]


class _Samples(Dataset):
    """The dataset as the loader reads it: a sample that fails becomes a SampleError naming it."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except Exception as error:  # any failure of the data, reported as data
            text = " ".join(str(error).split()) or type(error).__name__
            raise SampleError(f"sample {index} of the training data could not be read: "
                              f"{type(error).__name__}: {text}") from error


class _OneStorage:
    """A micro-batch on its way out of a worker: pickled as ONE shared byte tensor that holds all of its
    tensors, and unpickled in the training process as the batch dict again (views into that tensor).

    torch sends each tensor from a worker in a shared-memory file of its own, whose descriptor the
    training process fetches over a socket from a thread of the worker, which first has to win the
    busy worker's GIL: one round trip per tensor. On a 2-core machine the five of a micro-batch
    took longer than reading its samples; one storage makes it one round trip (and one copy) per micro-batch.
    """

    def __init__(self, batch: dict):
        self.batch = batch

    def __reduce__(self):
        tensors = {key: value for key, value in self.batch.items() if torch.is_tensor(value)}
        # Widest elements first, so that every tensor starts at a multiple of its element size.
        placed = sorted(tensors, key=lambda key: -tensors[key].element_size())
        blob = torch.cat([tensors[key].reshape(-1).view(torch.uint8) for key in placed])
        offsets = itertools.accumulate((tensors[key].nbytes for key in placed), initial=0)
        views = {key: (offset, tensors[key].dtype, tensors[key].shape) for key, offset in zip(placed, offsets)}
        return _from_one_storage, (blob, views, {key: value for key, value in self.batch.items() if key not in views},
                                   list(self.batch))


def _from_one_storage(blob: torch.Tensor, views: dict, others: dict, order: list) -> dict:
    """The batch of _OneStorage, keys in their order: each tensor a view of ``blob``, the rest as sent."""
    def view(offset, dtype, shape):
        return blob[offset : offset + shape.numel() * dtype.itemsize].view(dtype).view(shape)
    return {key: view(*views[key]) if key in views else others[key] for key in order}


def _collate_to_ship(samples, **options) -> _OneStorage:
    return _OneStorage(collate(samples, **options))


def micro_batch_loader(dataset, sampler: MicroBatchSampler, num_workers: int, pad_to_multiple_of: int = 1,
                       pad_token_id: int = MODERNBERT_IDS.pad) -> DataLoader:
    """A DataLoader yielding the packed micro-batches (data.batches.collate) of ``sampler``.

    Sequence parallelism pads a micro-batch to ``pad_to_multiple_of`` (TP) with ``pad_token_id``: it must
    be the run's own [PAD], since the model refuses any id outside the run's vocabulary."""
    # Forked workers (Linux's default, which Megatron-LM's loaders get too): they start at once and share
    # the memory-mapped indices; a process that was itself spawned would otherwise spawn them, re-importing
    # everything and pickling the datasets.
    workers = dict(prefetch_factor=PREFETCH_FACTOR, multiprocessing_context="fork",
                   worker_init_fn=_leave_stop_requests_to_the_rank) if num_workers else {}
    # Its own generator: each iterator draws a worker seed from it, and drawing from torch's default
    # one would move the dropout RNG (a resumed run would no longer repeat the straight run). Samples
    # are seeded by their index (datasets.py), so the loader needs no randomness of its own.
    # Workers ship each micro-batch in one storage (_OneStorage); read in-process it is used as it is.
    collate_fn = partial(_collate_to_ship if num_workers else collate, pad_to_multiple_of=pad_to_multiple_of,
                         pad_token_id=pad_token_id)
    return DataLoader(_Samples(dataset), batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator(), **workers)


def step_iterators(batches: Iterator[dict], num_micro: int, num_chunks: int):
    """The next ``num_micro`` micro-batches as the pipeline schedule wants them: one iterator, or with
    virtual pipeline stages one per model chunk, each chunk reading the same micro-batches."""
    step = itertools.islice(batches, num_micro)
    return step if num_chunks == 1 else list(itertools.tee(step, num_chunks))
