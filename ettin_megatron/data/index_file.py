"""An IndexedDataset's index arrays read with plain file reads instead of through its memory map.

IndexedDataset memory-maps the .idx file and exposes its arrays (sequence lengths, pointers, document
indices) as views of the map. Every page touched through a map stays resident in the process, with
the kernel's fault-around 64 KB around each touch, so a scan of the document indices or a thousand
probes of the pointers spread over the corpus would keep the whole array in every rank's memory
(8 bytes a document: 16 GB for the 2B documents of a 2T-token corpus). Bytes read with pread are held
by the page cache only, which every process shares and the kernel can reclaim.
"""

import os

import numpy
from megatron.core.datasets.indexed_dataset import IndexedDataset

from ettin_megatron.errors import InputError


class IndexFile:
    """The .idx file of `dataset`, open (as a context manager) to read slices of its arrays."""

    def __init__(self, dataset: IndexedDataset) -> None:
        self.mapped = dataset.index.bin_buffer_mmap
        self.start = self.mapped.__array_interface__["data"][0]

    def __enter__(self) -> "IndexFile":
        self.file = open(self.mapped.filename, "rb")
        return self

    def __exit__(self, *exception) -> None:
        self.file.close()

    def read(self, array: numpy.ndarray, first: int, count: int = 1) -> numpy.ndarray:
        """``array[first : first + count]``, `array` being one of the dataset's index arrays, as a new
        array (numpy's allocator: large ones get transparent huge pages, which random gathers need)."""
        part = numpy.empty(max(0, min(count, len(array) - first)), array.dtype)
        unread = part.data.cast("B")
        offset = array.__array_interface__["data"][0] - self.start + first * array.itemsize
        while unread:  # a read returns at most ~2 GB
            done = os.preadv(self.file.fileno(), [unread], offset)
            if not done:
                raise EOFError(f"{self.mapped.filename} is shorter than its header says")
            unread, offset = unread[done:], offset + done
        return part


def dataset_prefix(path: str) -> str:
    """The prefix of the dataset ``path`` names. Users paste the name of one of its files
    (``x_text_document.bin`` or ``.idx``) where a prefix is expected: that suffix is dropped, unless
    ``path`` is itself the prefix of a dataset. Every tool and --data-path read prefixes through it."""
    stem, suffix = os.path.splitext(path)
    return stem if suffix in (".bin", ".idx") and not IndexedDataset.exists(path) else path


def existing_dataset(path: str) -> str:
    """``dataset_prefix(path)``, or a one-line InputError when no dataset is there."""
    prefix = dataset_prefix(path)
    if not IndexedDataset.exists(prefix):
        raise InputError(f"{path}: no dataset there (expected {prefix}.bin and {prefix}.idx); pass the prefix "
                         "tools/preprocess_data.py wrote")
    return prefix


def open_dataset(prefix: str):
    """megatron's IndexedDataset at ``prefix``, with a one-line InputError for an empty .bin (a dataset
    without documents), which megatron would fail to mmap with a traceback."""
    if os.path.getsize(prefix + ".bin") == 0:
        raise InputError(f"{prefix}.bin is empty (a dataset without documents); preprocess an input that has "
                         "documents, or leave it out")
    return IndexedDataset(prefix)
