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
split, ``random_seed``, the layout and its chunk sizes; epoch e's random draws (its document order
and sample order) come from a generator seeded with (random_seed, e), so asking for more samples
only appends epochs and never changes earlier samples. The masking of sample i is drawn from a generator seeded with
(random_seed, split, i). Sample i is therefore the same whatever the order, the process or the
data-parallel layout that asks for it. (The prefixes of a blend share these seeds, so their samples
of equal index draw the same random numbers; within each prefix masks still vary independently
from sample to sample, which is what training needs.)
"""

import copy
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

from ettin_megatron.data import index_cache
from ettin_megatron.data.chunking import ChunkRules, stored_framing
from ettin_megatron.data.index_file import IndexFile
from ettin_megatron.data.objectives import OBJECTIVES, Masking, apply_objective, ordinary_token_ids
from ettin_megatron.data.sample_index import (
    Census,
    chunk_bounds,
    concat_bounds,
    epoch_documents,
    index_dtype,
    shuffle_dtype,
)
from ettin_megatron.errors import ConfigError
from ettin_megatron.runtime import is_writer, report
from ettin_megatron.vocab import MODERNBERT_IDS

LAYOUTS = ("document", "packed", "concat")


@dataclass
class EttinDatasetConfig(BlendedMegatronDatasetConfig):
    """Megatron's dataset config (blend, split, seed, cache, ...) plus the Ettin sample fields.

    ``sequence_length`` is the maximum sample length (exact length for the "concat" layout).
    """

    layout: str = "document"
    """What a sample is. "document" (Ettin): one chunk of one document. Each document body is cut
    into consecutive chunks of at most sequence_length - 2 tokens, each framed [CLS] ... [SEP]
    (a stored [CLS]/[SEP] frame is replaced, never doubled), with Ettin's rules for the short last
    piece (min_chunk_size, always_skip_size; see chunking.py): every token is in exactly one sample
    per epoch except the short tails that the always-skip rule drops.
    "packed" (ModernBERT): those chunks packed greedily in order up to sequence_length, each its
    own attention segment.
    "concat" (GPT-style decoder): the stored token stream of the documents cut into samples of
    exactly sequence_length tokens, one attention segment per sample; the stream's tail that does
    not fill a sample is dropped at the end of each epoch. No extra (+1) token is read: the
    objective labels the sample from its own tokens (the last token has no CLM label), so every
    layout and objective combine freely and all concat samples have the same length.
    Chunks are cut when the sample index is built, so another sequence_length re-chunks the same
    preprocessed data."""

    min_chunk_size: Optional[int] = None
    """A last piece shorter than this (body tokens) takes a random number of tokens from the end of
    the piece before it (Ettin's backfill). None: Ettin's 512, or half the sequence below 1024
    (ChunkRules.for_sequence)."""

    always_skip_size: Optional[int] = None
    """A piece shorter than this (body tokens) is dropped unless it is the document's first.
    None: Ettin's 128, or an eighth of the sequence below 1024."""

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
        if self.layout != "concat":  # resolve the default sizes (they name the cache) and check them
            rules = ChunkRules.for_sequence(self.sequence_length, self.min_chunk_size, self.always_skip_size)
            self.min_chunk_size, self.always_skip_size = rules.min_chunk_size, rules.always_skip_size
        ordinary = ordinary_token_ids(self.num_ordinary_tokens, self.extra_special_token_ids)
        specials = (self.cls_token_id, self.sep_token_id, self.pad_token_id, self.mask_token_id)
        if numpy.isin(specials, ordinary).any():
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

    def chunk_rules(self) -> ChunkRules:
        """How the "document" and "packed" layouts cut documents (see chunking.py)."""
        return ChunkRules(self.sequence_length, self.min_chunk_size, self.always_skip_size, self.random_seed)

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


def require_documents(dataset: IndexedDataset, prefix: str) -> None:
    """Refuse a sentence-level dataset: EttinDataset takes each IndexedDataset sequence for a document,
    so the sentences of a --split-sentences dataset would silently become one-sentence samples. A
    document of several sequences gives it away; empty documents (no sequence) are harmless. Scanned
    in slices read from the .idx file (index_file.py): a 2T-token corpus has ~1e9 documents, and a
    whole-array diff would hold 8 GB per rank."""
    starts, step = dataset.document_indices, 1 << 16
    with IndexFile(dataset) as index:
        for first in range(0, len(starts) - 1, step):
            if numpy.any(numpy.diff(index.read(starts, first, step + 1)) > 1):
                raise ConfigError(f"{prefix} is a sentence-level dataset (from --split-sentences); Ettin "
                                  "trains on documents: preprocess without --split-sentences.")


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
        self.chunks = None if config.layout == "concat" else config.chunk_rules()
        self.framing = (0, 0) if self.chunks is None else stored_framing(
            indexed_dataset, config.cls_token_id, config.sep_token_id)
        self._cls, self._sep = (numpy.array([token]) for token in (config.cls_token_id, config.sep_token_id))
        self.document_index, self.sample_index, self.shuffle_index = self._build_or_load_indices()

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
        """The sample index depends on the layout and chunk sizes too (objective and rates act per
        sample)."""
        return MegatronDataset._key_config_attributes() + ["layout", "min_chunk_size", "always_skip_size"]

    def __len__(self) -> int:
        return self.shuffle_index.shape[0]

    def __getitem__(self, idx: int) -> Dict[str, numpy.ndarray]:
        pieces = self.pieces(idx)
        parts = [self.dataset.get(document, offset, length) for document, offset, length in pieces]
        if self.chunks is None:
            segment_lengths = [sum(length for _, _, length in pieces)]
        else:  # each chunk framed [CLS] body [SEP], all in the one concatenation below
            parts = [token for part in parts for token in (self._cls, part, self._sep)]
            segment_lengths = [length + 2 for _, _, length in pieces]
        rng = numpy.random.default_rng((self.config.random_seed, self.index_split.value, int(idx)))
        sample = apply_objective(
            self.config.objective,
            numpy.concatenate(parts, dtype=numpy.int64),
            segment_lengths,
            self.masking,
            rng,
        )
        sample["segment_lengths"] = numpy.asarray(segment_lengths, dtype=numpy.int64)
        return sample

    def pieces(self, idx: int) -> List[Tuple[int, int, int]]:
        """(document, offset, length) of the stored tokens sample `idx` is made of: its chunks'
        bodies (framed when read), or for "concat" the stream cut to exactly sequence_length."""
        row = int(self.shuffle_index[int(idx)])
        position, offset = self.sample_index[row].tolist()
        lengths, pieces = self.dataset.sequence_lengths, []
        if self.chunks is None:
            budget = self.config.sequence_length
            while budget:
                document = int(self.document_index[position])
                length = min(int(lengths[document]) - offset, budget)
                if length:
                    pieces.append((document, offset, length))
                position, offset, budget = position + 1, 0, budget - length
            return pieces
        end = (position, offset + 1)  # "document": one chunk; "packed": up to where the next starts
        if self.config.layout == "packed":
            end = tuple(self.sample_index[row + 1].tolist())
        while (position, offset) != end:
            document = int(self.document_index[position])
            body = int(lengths[document]) - sum(self.framing)
            start, length = self.chunks.span(body, document, offset)
            pieces.append((document, self.framing[0] + start, length))
            offset += 1
            if (position, offset) != end and offset == self.chunks.counts(body):
                position, offset = position + 1, 0
        return pieces

    def _build_indices(self) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """Document order, sample bounds and shuffle index (sample_index.py), as megatron's
        GPTDataset, epoch by epoch until num_samples.

        Each epoch takes this split's documents (those with tokens: with a body for the chunking
        layouts), lays out their samples and shuffles them (only among themselves: samples never span
        two epochs), so that the chunks of one long document are spread out as in GPTDataset. The
        documents are shuffled first where their order decides what a sample holds: which documents
        share a "concat" or "packed" sample. A "document" sample is one chunk of one document, so
        there the document order would only permute rows that the sample shuffle permutes anyway
        (one corpus-sized shuffle fewer: ~0.2 s of a ~1.1 s build at 5M documents).
        """
        framing = 0 if self.chunks is None else sum(self.framing)
        orders, bounds, shuffles, built, wanted = [], [], [], 0, self.num_samples or 0
        while not orders or built < wanted:
            rng = numpy.random.default_rng((self.config.random_seed, len(orders)))
            stored = self._stored_lengths()  # read again each epoch: freed before the shuffle index
            order, census = epoch_documents(stored, self.indices, framing, self.chunks)
            if self.config.layout != "document":  # in place: rng.permutation's draws without its copy
                rng.shuffle(order)
            if self.chunks is None:
                epoch = concat_bounds(stored, order, self.config.sequence_length, census.tokens)
            else:
                epoch = chunk_bounds(self.config.layout, stored, framing, order, self.chunks, census)
            del stored
            if len(epoch) == 1 and wanted:
                raise ConfigError(self._no_sample_message())
            samples = len(epoch) - 1
            if not orders:
                self._report(census, samples)
            shuffles.append(numpy.arange(built, built + samples, dtype=shuffle_dtype(built + samples)))
            rng.shuffle(shuffles[-1])
            orders.append(order)
            bounds.append(epoch)
            built += samples
        if len(bounds) == 1:
            return orders[0], bounds[0], shuffles[0]
        positions = len(orders) * census.documents
        ends = numpy.array([[positions, 0]])  # where the last sample ends ("packed" reads it)
        sample_index = numpy.concatenate([rows[:-1] for rows in bounds] + [ends]).astype(index_dtype(positions))
        first = numpy.cumsum([0] + [len(rows) - 1 for rows in bounds])
        for number in range(len(bounds)):  # positions in the epochs' joined order
            sample_index[first[number] : first[number + 1], 0] += number * census.documents
        return numpy.concatenate(orders), sample_index, numpy.concatenate(shuffles).astype(shuffle_dtype(built))

    def _no_sample_message(self) -> str:
        """Why this split has no sample, and what would give it one: more documents, or for "concat" (a
        sample is exactly sequence_length tokens of the stream) shorter samples; no validation at all."""
        name = self.index_split.name
        fixes = ["more data", f"a larger {name} share in --split"]
        if self.config.layout == "concat":
            fixes.append("a shorter --seq-length")
        if self.index_split == Split.valid:
            fixes.append("--eval-iters 0 (no validation)")
        return (f"The {name} split of {self.dataset_path} has no {self.config.layout} sample of length "
                f"{self.config.sequence_length}: use {', '.join(fixes[:-1])} or {fixes[-1]}.")

    def _stored_lengths(self) -> numpy.ndarray:
        """The stored document lengths, which the build gathers in shuffled order: read into memory
        when this split is most of the prefix (GPTDataset's rule), since gathering through the memory
        map's 4 KB pages takes twice as long as from an array on huge pages, for the same memory."""
        lengths = self.dataset.sequence_lengths
        if 2 * len(self.indices) <= len(lengths):
            return lengths
        with IndexFile(self.dataset) as index:
            return index.read(lengths, 0, len(lengths))

    def _report(self, census: Census, samples: int) -> None:
        """One line: documents, tokens, samples and the share of tokens used, per epoch."""
        tokens = census.tokens
        used = samples * self.config.sequence_length if self.chunks is None else tokens - census.dropped
        report(f"{self.dataset_path} {self.index_split.name}: {census.documents:,} documents, {tokens:,} tokens, "
               f"{samples:,} {self.config.layout} samples of <= {self.config.sequence_length} tokens per "
               f"epoch, {used / max(tokens, 1):.1%} of the tokens used")

    def _build_or_load_indices(self) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """Load the indices from the cache (index_cache.py) when there, else build them and, on the
        writer (global rank 0, or a lone process), save them and use the saved memory maps: ranks
        build after rank 0 (megatron's builder), so they load what it wrote and every process of a
        node shares one copy in the page cache. The cache is config.path_to_cache or, without one,
        beside the data; if that default cannot be written, every rank builds its own, with a
        warning."""
        explicit = self.config.path_to_cache
        cache = explicit or index_cache.default_cache_dir(self.dataset_path)
        base = f"{self.unique_description_hash}-{type(self).__name__}-{self.index_split.name}"
        names = ("document_index.npy", "sample_index.npy", "shuffle_index.npy")
        loaded = index_cache.load(cache, base, names)
        if loaded is not None:
            return loaded
        if not is_writer():
            return self._build_indices()
        reason = index_cache.require_writable(cache) if explicit else index_cache.writable(cache)
        if reason:
            report(f"warning: cannot cache the sample indices in {cache} ({reason}): every rank builds "
                   "its own; pass --data-cache-path.")
            return self._build_indices()
        index_cache.save(cache, base, names, self._build_indices(), self.unique_description)
        return index_cache.load(cache, base, names)


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
        names = ("dataset_index.npy", "dataset_sample_index.npy")
        if torch.distributed.is_initialized() or not cache or index_cache.load(cache, base, names):
            return super()._build_indices()
        config, self.config = self.config, copy.copy(self.config)
        self.config.path_to_cache = None
        try:
            indices = super()._build_indices()
        finally:
            self.config = config
        index_cache.save(cache, base, names, indices, self.unique_description)
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
