"""Ettin datasets on megatron-core's dataset machinery.

Megatron-core supplies the reading (IndexedDataset .bin/.idx, one sequence per text document, each
wrapped [CLS] ... [SEP] by tools/preprocess_data.py), the train/valid/test split by document, the
weighted blend of several prefixes (BlendedDataset) and the rank-0-builds-first protocol
(BlendedMegatronDatasetBuilder). This module adds what it lacks: the three sample layouts and the
MLM / CLM / MNTP objectives (objectives.py), computed on the fly per sample.

A sample is a dict of numpy arrays: ``tokens``, ``labels``, ``loss_mask`` (see objectives.py for the
label convention) and ``segment_lengths`` (its attention segments, summing to ``len(tokens)``);
batches.collate turns a list of them into the packed micro-batch the model consumes.

Determinism: the sample index (which document tokens make sample i) is a function of the data, the
split, ``random_seed`` and the layout; epoch e's document order is drawn from a generator seeded
with (random_seed, e), so asking for more samples only appends epochs and never changes earlier
samples. The masking of sample i is drawn from a generator seeded with
(random_seed, split, i). Sample i is therefore the same whatever the order, the process or the
data-parallel layout that asks for it. (The prefixes of a blend share these seeds, so their samples
of equal index draw the same random numbers; within each prefix masks still vary independently
from sample to sample, which is what training needs.)
"""

import copy
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy
import torch

from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.megatron_dataset import MegatronDataset
from megatron.core.datasets.utils import Split

from ettin_megatron.config import ConfigError
from ettin_megatron.data.objectives import OBJECTIVES, Masking, apply_objective, ordinary_token_ids
from ettin_megatron.data.tokenizer import MODERNBERT_IDS
from ettin_megatron.runtime import is_writer

LAYOUTS = ("document", "packed", "concat")


@dataclass
class EttinDatasetConfig(BlendedMegatronDatasetConfig):
    """Megatron's dataset config (blend, split, seed, cache, ...) plus the Ettin sample fields.

    ``sequence_length`` is the maximum sample length (exact length for the "concat" layout).
    """

    layout: str = "document"
    """"document" (Ettin): one document per sample, truncated to sequence_length, unpadded.
    "packed" (ModernBERT): whole documents packed greedily in order up to sequence_length (a longer
    document is truncated), each its own attention segment.
    "concat" (GPT-style decoder): the token stream of the documents cut into samples of exactly
    sequence_length tokens, one attention segment per sample; the stream's tail that does not fill
    a sample is dropped at the end of each epoch. No extra (+1) token is read: the objective labels
    the sample from its own tokens (the last token has no CLM label), so every layout and objective
    combine freely and all concat samples have the same length."""

    objective: str = "mlm"
    """"mlm" | "clm" | "mntp", see objectives.apply_objective."""

    mask_rate: float = 0.3
    """MLM/MNTP masking probability of the train split (Ettin: 0.3 in phases 1-2, 0.15 in
    phase 3)."""

    eval_mask_rate: float = 0.15
    """Masking probability of the valid and test splits: evaluation always uses 15% in Ettin, so
    its loss stays comparable across phases whatever the train rate."""

    mask_token_prob: float = 0.8
    """Share of the chosen positions replaced by [MASK]."""

    random_token_prob: float = 0.1
    """Share of the chosen positions replaced by a random ordinary token (the rest keep theirs)."""

    cls_token_id: int = MODERNBERT_IDS.cls
    sep_token_id: int = MODERNBERT_IDS.sep
    pad_token_id: int = MODERNBERT_IDS.pad
    mask_token_id: int = MODERNBERT_IDS.mask

    num_ordinary_tokens: int = 50280
    """Ids [0, num_ordinary_tokens) are ordinary (maskable, drawable as random replacements) unless
    listed in extra_special_token_ids; ids at or above it ([UNK] 50280, [CLS], [SEP], [PAD], [MASK],
    [unusedN]) are special. For a small test vocabulary put the specials at the top likewise."""

    extra_special_token_ids: Tuple[int, ...] = (1, 50279)
    """Ids below num_ordinary_tokens that are nevertheless special: the ModernBERT tokenizer marks
    <|padding|> (1) and <|endoftext|> (50279) as special tokens, so they are never masked or
    drawn."""

    def __post_init__(self) -> None:
        if self.blend is None and not (self.blend_per_split and any(self.blend_per_split)):
            raise ConfigError(
                "EttinDatasetConfig needs data: set blend (with split) or blend_per_split to "
                "IndexedDataset prefixes written by tools/preprocess_data.py."
            )
        if self.fast_cache_load or self.defer_npy_index_mmap:
            raise ConfigError(
                "fast_cache_load and defer_npy_index_mmap are GPTDataset options; set them to "
                "False for EttinDataset (it loads its cached indices as memory maps anyway)."
            )
        super().__post_init__()
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}.")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.sequence_length < 1:
            raise ConfigError(f"sequence_length must be positive, got {self.sequence_length}.")
        ordinary = set(ordinary_token_ids(self.num_ordinary_tokens, self.extra_special_token_ids))
        specials = (self.cls_token_id, self.sep_token_id, self.pad_token_id, self.mask_token_id)
        if ordinary.intersection(specials):
            raise ConfigError(
                f"special token ids {specials} must not be ordinary tokens: set "
                f"num_ordinary_tokens (now {self.num_ordinary_tokens}) below them or list them "
                "in extra_special_token_ids."
            )
        for split in (Split.train, Split.valid):
            try:
                self.masking(split)  # validates the rates now rather than at the first sample
            except ValueError as error:
                raise ConfigError(str(error)) from None

    def masking(self, split: Split) -> Masking:
        """The MLM/MNTP masking of `split` (train: mask_rate, valid/test: eval_mask_rate)."""
        return Masking(
            rate=self.mask_rate if split == Split.train else self.eval_mask_rate,
            mask_token_id=self.mask_token_id,
            ordinary_token_ids=ordinary_token_ids(
                self.num_ordinary_tokens, self.extra_special_token_ids
            ),
            mask_token_prob=self.mask_token_prob,
            random_token_prob=self.random_token_prob,
        )


def pack_greedily(cum_lengths: numpy.ndarray, capacity: int) -> numpy.ndarray:
    """Start positions of greedy in-order packing: a sample takes documents while they fit.

    ``cum_lengths`` is [0, l0, l0+l1, ...] over documents each at most `capacity` long. The greedy
    chain s -> next(s) is sequential, so it is evaluated by pointer doubling (log2(n) vectorized
    steps) instead of a Python loop over what can be billions of samples.
    """
    n = len(cum_lengths) - 1
    jump = numpy.searchsorted(cum_lengths, cum_lengths + capacity, side="right") - 1
    steps = numpy.arange(n + 1)
    position = numpy.zeros(n + 1, dtype=numpy.int64)
    bit = 1
    while bit <= n:
        taken = (steps & bit) != 0
        position[taken] = jump[position[taken]]
        jump = jump[jump]
        bit <<= 1
    return position[position < n]


def epoch_samples(layout: str, lengths: numpy.ndarray, sequence_length: int) -> numpy.ndarray:
    """Rows (first document position, token offset, number of documents) of one epoch's samples.

    `lengths` are the (non-zero) token counts of the epoch's documents in reading order.
    """
    n = len(lengths)
    if layout == "document":
        first = numpy.arange(n)
        return numpy.stack([first, numpy.zeros(n, numpy.int64), numpy.ones(n, numpy.int64)], 1)
    if layout == "packed":
        first = pack_greedily(_cumsum0(numpy.minimum(lengths, sequence_length)), sequence_length)
        count = numpy.diff(numpy.append(first, n))
        return numpy.stack([first, numpy.zeros(len(first), numpy.int64), count], 1)
    cum = _cumsum0(lengths)
    start = numpy.arange(cum[-1] // sequence_length, dtype=numpy.int64) * sequence_length
    first = numpy.searchsorted(cum, start, side="right") - 1
    last = numpy.searchsorted(cum, start + sequence_length - 1, side="right") - 1
    return numpy.stack([first, start - cum[first], last - first + 1], 1)


def _cumsum0(values: numpy.ndarray) -> numpy.ndarray:
    return numpy.concatenate([[0], numpy.cumsum(values, dtype=numpy.int64)])


def require_documents(dataset: IndexedDataset, prefix: str) -> None:
    """Refuse a sentence-level dataset: EttinDataset takes each IndexedDataset sequence for a document,
    so the sentences of a --split-sentences dataset would silently become one-sentence samples. A
    document of several sequences gives it away; empty documents (no sequence) are harmless. Scanned
    in slices: a 2T-token corpus has ~1e9 documents, and a whole-array diff would hold 8 GB per rank."""
    starts, step = dataset.document_indices, 1 << 24
    for first in range(0, len(starts) - 1, step):
        if numpy.any(numpy.diff(starts[first : first + step + 1]) > 1):
            raise ConfigError(f"{prefix} is a sentence-level dataset (from --split-sentences); Ettin trains "
                              "on documents: preprocess without --split-sentences.")


class EttinDataset(MegatronDataset):
    """One split of one IndexedDataset prefix, as samples of the configured layout and objective."""

    def __init__(
        self,
        indexed_dataset: IndexedDataset,
        dataset_path: Optional[str],
        indexed_indices: numpy.ndarray,
        num_samples: Optional[int],
        index_split: Split,
        config: EttinDatasetConfig,
    ) -> None:
        super().__init__(
            indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config
        )
        self.masking = config.masking(index_split)
        self.document_index, self.sample_index = self._build_or_load_indices()

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: IndexedDataset) -> int:
        """Split by document: one IndexedDataset sequence is one document."""
        return low_level_dataset.sequence_lengths.shape[0]

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: EttinDatasetConfig) -> IndexedDataset:
        dataset = IndexedDataset(dataset_path, multimodal=False, mmap=config.mmap_bin_files)
        require_documents(dataset, dataset_path)
        return dataset

    @staticmethod
    def _key_config_attributes() -> List[str]:
        """The sample index depends on the layout too (objective and rates act per sample)."""
        return MegatronDataset._key_config_attributes() + ["layout"]

    def __len__(self) -> int:
        return self.sample_index.shape[0]

    def __getitem__(self, idx: int) -> Dict[str, numpy.ndarray]:
        parts = self._read(int(idx))
        lengths = [len(part) for part in parts]
        segment_lengths = [sum(lengths)] if self.config.layout == "concat" else lengths
        rng = numpy.random.default_rng((self.config.random_seed, self.index_split.value, int(idx)))
        sample = apply_objective(
            self.config.objective,
            numpy.concatenate(parts).astype(numpy.int64),
            segment_lengths,
            self.masking,
            rng,
        )
        sample["segment_lengths"] = numpy.asarray(segment_lengths, dtype=numpy.int64)
        return sample

    def _read(self, idx: int) -> List[numpy.ndarray]:
        """The document pieces of sample `idx`: each truncated to sequence_length, or for "concat"
        all of them together cut to exactly sequence_length."""
        first, offset, count = (int(value) for value in self.sample_index[idx])
        budget = self.config.sequence_length
        parts = []
        for document in self.document_index[first : first + count]:
            length = min(int(self.dataset.sequence_lengths[document]) - offset, budget)
            parts.append(self.dataset.get(int(document), offset=offset, length=length))
            offset = 0
            if self.config.layout == "concat":
                budget -= length
        return parts

    def _build_indices(self) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """Document order and sample rows, epoch by epoch until num_samples is reached.

        Each epoch shuffles this split's non-empty documents, lays them out (epoch_samples) and
        shuffles the resulting samples, so that consecutive concat samples of one long document are
        spread out as in megatron's GPTDataset. Samples never span two epochs.
        """
        lengths = self.dataset.sequence_lengths
        documents = self.indices[lengths[self.indices] > 0]
        document_index, sample_index, num_built = [], [], 0
        wanted, epoch = self.num_samples or 0, 0
        while epoch == 0 or num_built < wanted:
            rng = numpy.random.default_rng((self.config.random_seed, epoch))
            order = documents[rng.permutation(len(documents))]
            rows = epoch_samples(self.config.layout, lengths[order], self.config.sequence_length)
            if len(rows) == 0 and num_built < wanted:
                raise ConfigError(
                    f"The {self.index_split.name} split of {self.dataset_path} has no "
                    f"{self.config.layout} sample of length {self.config.sequence_length}: give it "
                    "more documents (split, data) or lower sequence_length."
                )
            rows[:, 0] += epoch * len(documents)
            document_index.append(order)
            sample_index.append(rows[rng.permutation(len(rows))])
            num_built += len(rows)
            epoch += 1
        return (
            numpy.concatenate(document_index).astype(numpy.int64),
            numpy.concatenate(sample_index).astype(numpy.int64),
        )

    def _build_or_load_indices(self) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """Megatron's index caching: load from config.path_to_cache when there, else build and (on
        global rank 0, or in a process without torch.distributed) save. Files are named as
        megatron's, after the hash of the dataset's description; the description is written last,
        so an interrupted write is never taken for a cache hit. No cache without path_to_cache."""
        cache = self.config.path_to_cache
        base = f"{self.unique_description_hash}-{type(self).__name__}-{self.index_split.name}"
        path = lambda suffix: os.path.join(cache, f"{base}-{suffix}")
        names = ("document_index.npy", "sample_index.npy")
        if cache and all(os.path.isfile(path(n)) for n in names + ("description.txt",)):
            return tuple(numpy.load(path(n), mmap_mode="r") for n in names)
        indices = self._build_indices()
        if cache and is_writer():
            os.makedirs(cache, exist_ok=True)
            for name, array in zip(names, indices):
                numpy.save(path(name), array)
            with open(path("description.txt"), "wt") as writer:
                writer.write(self.unique_description)
        return indices


class _BlendedDataset(BlendedDataset):
    """megatron's BlendedDataset, with an index cache that also works without torch.distributed.

    On a cache miss megatron's _build_indices asks torch.distributed.get_rank(), which raises when
    no process group exists (CPU tests, a single-process data check). A lone process is rank 0:
    build the indices as megatron does without a cache, then save them under megatron's file names
    so later runs, distributed or not, load them.
    """

    def _build_indices(self) -> Tuple[numpy.ndarray, numpy.ndarray]:
        cache = self.config.path_to_cache
        base = f"{self.unique_description_hash}-{type(self).__name__}-{self.split.name}"
        path = lambda suffix: os.path.join(cache, f"{base}-{suffix}")
        names = ("dataset_index.npy", "dataset_sample_index.npy")
        if (
            torch.distributed.is_initialized()
            or not cache
            or all(os.path.isfile(path(name)) for name in names + ("description.txt",))
        ):
            return super()._build_indices()
        config, self.config = self.config, copy.copy(self.config)
        self.config.path_to_cache = None
        try:
            indices = super()._build_indices()
        finally:
            self.config = config
        os.makedirs(cache, exist_ok=True)
        for name, array in zip(names, indices):
            numpy.save(path(name), array, allow_pickle=True)
        with open(path("description.txt"), "wt") as writer:
            writer.write(self.unique_description)
        return indices


class _Builder(BlendedMegatronDatasetBuilder):
    """The megatron builder, building blends as _BlendedDataset."""

    @staticmethod
    def build_generic_dataset(cls, is_built_on_rank, synchronize_ranks, *args):
        if cls is BlendedDataset:
            cls = _BlendedDataset
        return BlendedMegatronDatasetBuilder.build_generic_dataset(
            cls, is_built_on_rank, synchronize_ranks, *args
        )


def build_datasets(
    config: EttinDatasetConfig,
    train_valid_test_num_samples: Sequence[Optional[int]],
    is_built_on_rank: Callable[[], bool] = lambda: True,
) -> List[Optional[torch.utils.data.Dataset]]:
    """Build [train, valid, test] datasets (None for a split that is absent).

    Sizes are the minimum numbers of samples per split (None: one epoch), exactly as megatron's
    BlendedMegatronDatasetBuilder takes them; a blend with weights yields a BlendedDataset whose
    samples carry an extra "dataset_id". Call on every rank; with torch.distributed initialized,
    rank 0 builds (and caches) first, and ranks for which `is_built_on_rank()` is False (e.g.
    middle pipeline stages, which read no data) get None.
    """
    sizes = list(train_valid_test_num_samples)
    return _Builder(EttinDataset, sizes, is_built_on_rank, config).build()
