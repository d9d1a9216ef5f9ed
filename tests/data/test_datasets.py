"""EttinDataset layouts, splits, blends, determinism and index caching, on small IndexedDatasets
written with megatron's own IndexedDatasetBuilder. No GPU, no torch.distributed."""

import os

import numpy
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder, _IndexWriter

from ettin_megatron.data.chunking import stored_framing
from ettin_megatron.data.datasets import EttinDatasetConfig, build_datasets, require_documents
from ettin_megatron.data.sample_index import pack_greedily
from ettin_megatron.errors import ConfigError
from tests.ranks import run_ranks

CLS, SEP, PAD, MASK = 1001, 1002, 1003, 1004
SPECIAL_IDS = dict(
    cls_token_id=CLS, sep_token_id=SEP, pad_token_id=PAD, mask_token_id=MASK,
    num_ordinary_tokens=1000, extra_special_token_ids=(),
)


def write_prefix(directory, name, num_docs, min_len=3, max_len=40, seed=0):
    """Write [CLS] random-ordinary-ids [SEP] documents; return (prefix, documents)."""
    rng = numpy.random.default_rng(seed)
    prefix = os.path.join(directory, name)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    docs = []
    for _ in range(num_docs):
        body = rng.integers(0, 1000, rng.integers(min_len, max_len + 1) - 2)
        doc = numpy.concatenate([[CLS], body, [SEP]]).astype(numpy.int64)
        builder.add_document(doc, [len(doc)])
        docs.append(doc)
    builder.finalize(prefix + ".idx")
    return prefix, docs


def config(prefix, **fields):
    values = dict(random_seed=21, sequence_length=16, blend=([prefix], None), split="100,0,0")
    values.update(SPECIAL_IDS)
    values.update(fields)
    return EttinDatasetConfig(**values)


def train(cfg, size=None):
    return build_datasets(cfg, [size, None, None])[0]


def samples(dataset, indices=None):
    return [dataset[i] for i in (range(len(dataset)) if indices is None else indices)]


def same(a, b):
    return a.keys() == b.keys() and all(numpy.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_prefix(str(tmp_path_factory.mktemp("corpus")), "docs", 60)


def reading_order(dataset):
    """Samples sorted by where they start in the document order (they are stored shuffled)."""
    return [dataset[i] for i in numpy.argsort(dataset.shuffle_index)]


def test_document_layout_keeps_a_short_document_whole_as_one_unpadded_sample(corpus):
    prefix, docs = corpus  # every document fits in 64 tokens (test_data_chunking.py: longer ones)
    dataset = train(config(prefix, layout="document", objective="clm", sequence_length=64))
    got = sorted(tuple(s["tokens"]) for s in samples(dataset))
    assert got == sorted(tuple(d) for d in docs)
    for s in samples(dataset):
        assert s["segment_lengths"].tolist() == [len(s["tokens"])] and PAD not in s["tokens"]


@pytest.mark.parametrize("low, high, count", [
    (1, 60, 3000),  # some at full capacity: short runs between items that cannot share a sample
    (1, 3, 12000),  # tiny items: one run of ~570 samples, finished by pointer doubling
    (1, 60, 1), (1, 60, 0),
])
def test_pack_greedily_matches_a_plain_loop(low, high, count):
    rng = numpy.random.default_rng(7)
    lengths = numpy.minimum(rng.integers(low, high, count), 32)
    expected, start = [], 0
    while start < len(lengths):
        expected.append(start)
        used = 0
        while start < len(lengths) and used + lengths[start] <= 32:
            used += lengths[start]
            start += 1
    cum = numpy.concatenate([[0], numpy.cumsum(lengths)])
    assert pack_greedily(cum, 32).tolist() == expected


def test_packed_layout_packs_whole_short_documents_greedily_in_order(corpus):
    prefix, docs = corpus
    dataset = train(config(prefix, layout="packed", objective="clm", sequence_length=64))
    whole = {tuple(d) for d in docs}
    seen, order = [], reading_order(dataset)
    for i, s in enumerate(order):
        assert s["segment_lengths"].sum() == len(s["tokens"]) <= 64
        pieces = numpy.split(s["tokens"], numpy.cumsum(s["segment_lengths"])[:-1])
        assert all(tuple(p) in whole for p in pieces)
        seen += [tuple(p) for p in pieces]
        if i + 1 < len(order):  # greedy: the next sample's first document did not fit here
            assert len(s["tokens"]) + order[i + 1]["segment_lengths"][0] > 64
    assert sorted(seen) == sorted(whole)
    # The segments are the epoch's documents in their (shuffled) order.
    assert seen == [tuple(docs[d]) for d in dataset.document_index]


def test_concat_layout_cuts_the_document_stream_into_exact_samples(corpus):
    prefix, docs = corpus
    dataset = train(config(prefix, layout="concat", objective="clm"))
    stream = numpy.concatenate([docs[d] for d in dataset.document_index])
    assert sorted(dataset.document_index.tolist()) == list(range(len(docs)))
    assert len(dataset) == len(stream) // 16
    order = reading_order(dataset)
    assert all(s["segment_lengths"].tolist() == [16] for s in order)
    read = numpy.concatenate([s["tokens"] for s in order])
    assert numpy.array_equal(read, stream[: 16 * len(order)])


@pytest.mark.parametrize("layout", ["document", "packed", "concat"])
def test_more_samples_append_epochs_without_changing_earlier_samples(corpus, layout):
    prefix, _ = corpus
    one_epoch = train(config(prefix, layout=layout))
    longer = train(config(prefix, layout=layout), size=3 * len(one_epoch) + 1)
    assert len(longer) >= 3 * len(one_epoch) + 1
    earlier = samples(longer, range(len(one_epoch)))
    assert all(same(a, b) for a, b in zip(samples(one_epoch), earlier))


@pytest.mark.parametrize("layout", ["document", "packed", "concat"])
def test_samples_depend_only_on_seed_and_index(corpus, tmp_path, layout):
    prefix, _ = corpus
    make = lambda: train(config(prefix, layout=layout, path_to_cache=str(tmp_path)), 40)
    first, second = make(), make()  # the second loads the cached indices
    reference = samples(first, range(8))
    assert all(same(a, b) for a, b in zip(reference, samples(second, range(8))))
    assert all(same(first[i], reference[i]) for i in range(8))  # asked again
    # Another order / data-parallel split: rank r of 2 reads r, r + 2, ... from its own dataset.
    for rank in range(2):
        shard = make()
        for i in reversed(range(rank, 8, 2)):
            assert same(shard[i], reference[i])
    # Different index, different masking; different seed, different masking.
    assert not numpy.array_equal(reference[0]["loss_mask"], reference[1]["loss_mask"])
    reseeded = train(config(prefix, layout=layout, random_seed=22), 40)
    assert any(not same(a, b) for a, b in zip(reference, samples(reseeded, range(8))))


def _cache_without_torch_distributed(rank, prefix, cache_dir):
    assert not torch.distributed.is_initialized()
    built = train(config(prefix, layout="packed", path_to_cache=cache_dir))
    files = sorted(os.listdir(cache_dir))
    assert len(files) == 4 and all("EttinDataset-train" in f for f in files)
    loaded = train(config(prefix, layout="packed", path_to_cache=cache_dir))
    assert isinstance(loaded.sample_index, numpy.memmap)
    assert numpy.array_equal(built.sample_index, loaded.sample_index)


def test_index_cache_is_written_and_reused_without_torch_distributed(corpus, tmp_path):
    # A fresh process: other tests in this session may have initialized torch.distributed.
    run_ranks(1, _cache_without_torch_distributed, corpus[0], str(tmp_path))


def test_split_sizes_and_disjoint_documents(corpus):
    prefix, docs = corpus
    cfg = config(prefix, layout="document", objective="clm", split="80,20,0", sequence_length=64)
    trn, val, tst = build_datasets(cfg, [None, None, None])
    assert (len(trn), len(val), tst) == (48, 12, None)  # one sample per (short) document
    train_docs = {tuple(s["tokens"]) for s in samples(trn)}
    assert train_docs.isdisjoint(tuple(s["tokens"]) for s in samples(val))
    trn, val, _ = build_datasets(cfg, [100, 30, None])
    assert (len(trn), len(val)) == (144, 36)  # whole epochs of 48 and 12 documents


def test_validation_masks_15_percent_whatever_the_train_rate(tmp_path):
    prefix, _ = write_prefix(str(tmp_path), "big", 1000, min_len=100, max_len=300, seed=1)
    cfg = config(prefix, layout="document", sequence_length=512, split="80,20,0", mask_rate=0.3)
    for dataset, rate in zip(build_datasets(cfg, [None, None, None]), (0.3, 0.15)):
        out = samples(dataset)
        tokens = numpy.concatenate([s["tokens"] for s in out])
        chosen = numpy.concatenate([s["loss_mask"] for s in out]).sum()
        eligible = len(tokens) - 2 * len(out)  # all but [CLS] and [SEP]
        assert abs(chosen / eligible - rate) <= 5 * numpy.sqrt(rate * (1 - rate) / eligible)


def test_weighted_blend_of_two_prefixes(tmp_path):
    a, docs_a = write_prefix(str(tmp_path), "a", 50, seed=2)
    b, docs_b = write_prefix(str(tmp_path), "b", 50, seed=3)
    cfg = EttinDatasetConfig(
        random_seed=21, sequence_length=64, blend=([a, b], [0.25, 0.75]), split="90,10,0",
        layout="document", objective="clm", path_to_cache=str(tmp_path / "cache"), **SPECIAL_IDS,
    )
    trn, val, tst = build_datasets(cfg, [200, 20, 0])
    assert (len(trn), len(val), tst) == (200, 20, None)
    ids = numpy.array([trn[i]["dataset_id"] for i in range(len(trn))])
    assert (numpy.bincount(ids) == [50, 150]).all()
    sources = ({tuple(d) for d in docs_a}, {tuple(d) for d in docs_b})
    assert all(tuple(trn[i]["tokens"]) in sources[ids[i]] for i in range(len(trn)))
    again = build_datasets(cfg, [200, 20, 0])[0]  # from the cache, blend indices included
    assert any("BlendedDataset" in f for f in os.listdir(tmp_path / "cache"))
    assert all(same(trn[i], again[i]) for i in range(0, 200, 7))


def test_config_errors_say_what_to_change(corpus):
    """ConfigError, which the pretrain CLI prints as one line (a plain ValueError ends in a traceback)."""
    prefix, _ = corpus
    with pytest.raises(ConfigError, match="layout"):
        config(prefix, layout="bucketed")
    with pytest.raises(ConfigError, match="num_ordinary_tokens"):
        config(prefix, num_ordinary_tokens=2000)
    with pytest.raises(ConfigError, match="blend"):
        EttinDatasetConfig(random_seed=1, sequence_length=8)
    with pytest.raises(ConfigError, match="fast_cache_load"):
        config(prefix, fast_cache_load=True, path_to_cache="/tmp")
    with pytest.raises(ConfigError, match="mask rate"):
        config(prefix, eval_mask_rate=2.0)
    with pytest.raises(ConfigError, match="no concat sample of length 64"):
        train(config(prefix, layout="concat", sequence_length=64, split="1,99,0"), 10)


def test_sentence_level_dataset_is_refused(tmp_path):
    """A --split-sentences dataset stores each sentence as a sequence: one-sentence samples otherwise."""
    prefix = str(tmp_path / "sentences")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    for _ in range(10):
        builder.add_document(numpy.arange(12), [5, 7])
    builder.finalize(prefix + ".idx")
    with pytest.raises(ConfigError, match="sentence-level dataset .* preprocess without --split-sentences"):
        train(config(prefix))


def test_empty_documents_do_not_make_a_dataset_sentence_level(tmp_path):
    """Megatron-LM's tool writes an empty document (no sequence) for an empty text: still documents."""
    prefix = str(tmp_path / "with_empty")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    for i in range(10):
        builder.add_document(numpy.arange(12), [12])
        if i == 3:
            builder.add_document(numpy.array([], dtype=numpy.int32), [])
    builder.finalize(prefix + ".idx")
    assert len(samples(train(config(prefix)))) == 10


def resident_kb(path):
    """KB of `path`'s memory maps resident in this process (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if "-" in line.split()[0]:  # a mapping's header line: address range ... path
                inside = line.split()[-1] == path
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_data_checks_leave_the_index_file_unmapped(tmp_path):
    """require_documents scans every document's index and stored_framing probes 1024 documents spread
    over the prefix: through IndexedDataset's memory map of the .idx, what they touch (with the
    kernel's fault-around) would stay resident in every rank; read with pread, it does not."""
    prefix, documents = str(tmp_path / "many"), 1 << 20
    with _IndexWriter(prefix + ".idx", numpy.int32) as writer:
        writer.write(numpy.full(documents, 3, numpy.int32), None, numpy.arange(documents + 1))
    with open(prefix + ".bin", "wb") as data:
        data.truncate(documents * 3 * 4)
    dataset = IndexedDataset(prefix)
    require_documents(dataset, prefix)
    assert stored_framing(dataset, CLS, SEP) == (0, 0)
    assert resident_kb(prefix + ".idx") < 1024  # of the 20 MB .idx


def _build_under_one_gloo_rank(rank, prefix, cache_dir):
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    built = train(config(prefix, layout="packed", path_to_cache=cache_dir), 30)
    loaded = train(config(prefix, layout="packed", path_to_cache=cache_dir), 30)
    return [samples(built), samples(loaded)]


def test_build_under_torch_distributed(corpus, tmp_path):
    """The rank-0-builds-first path of megatron's builder (one gloo rank) gives the same samples."""
    prefix, _ = corpus
    reference = train(config(prefix, layout="packed"), 30)
    built, loaded = run_ranks(1, _build_under_one_gloo_rank, prefix, str(tmp_path / "cache"))[0]
    for a, b, c in zip(samples(reference), built, loaded):
        assert same(a, b) and same(a, c)