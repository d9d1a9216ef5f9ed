"""Ettin's chunking in the "document" and "packed" layouts: chunk boundaries, framing, the always-skip
and backfill rules on hand-made documents, and every token in exactly one sample per epoch (read back
through megatron's own IndexedDataset)."""

import os

import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from ettin_megatron.data import sample_index
from ettin_megatron.errors import ConfigError
from tests.data.test_datasets import CLS, SEP, config, train, write_prefix
from tests.training.training_data import write_tokenizer


def write_bodies(directory, name, bodies, lead=(CLS,), trail=(SEP,)):
    """One document per body, stored as lead + body + trail; returns the prefix."""
    prefix = os.path.join(str(directory), name)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    for body in bodies:
        builder.add_document(numpy.concatenate([lead, body, trail]).astype(numpy.int64), [len(lead) + len(body) + len(trail)])
    builder.finalize(prefix + ".idx")
    return prefix


def ettin_pieces(body, piece, min_chunk, always_skip, shift):
    """Ettin's chunk_instance (split_dataset_into_chunks_individual.py, --backfill
    --backfill_no_duplicates) as a plain loop, with its random backfill amount given as `shift`."""
    chunks = []
    for i, start in enumerate(range(0, len(body), piece)):
        chunk = list(body[start : start + piece])
        if len(chunk) < always_skip and i != 0:
            continue
        if len(chunk) < min_chunk and chunks:
            assert 0 <= shift < piece - len(chunk)
            if shift:
                chunk, chunks[-1] = chunks[-1][-shift:] + chunk, chunks[-1][:-shift]
        chunks.append(chunk)
    return chunks


def chunk_tokens(dataset, indices=None):
    """{document: [chunk bodies in order]} of the samples, from the sample tokens (framing checked)."""
    by_document = {}
    for i in range(len(dataset)) if indices is None else indices:
        sample, pieces = dataset[i], dataset.pieces(i)
        segments = numpy.split(sample["tokens"], numpy.cumsum(sample["segment_lengths"])[:-1])
        assert len(segments) == len(pieces) and len(sample["tokens"]) <= dataset.config.sequence_length
        for segment, (document, offset, length) in zip(segments, pieces):
            assert segment[0] == CLS and segment[-1] == SEP and len(segment) == length + 2
            by_document.setdefault(document, []).append((offset, segment[1:-1].tolist()))
    return {d: [body for _, body in sorted(chunks)] for d, chunks in by_document.items()}


# body lengths at sequence_length 12 (pieces of 10), min chunk 6, always-skip 3:
HAND_MADE = {
    4: "a lone short first piece: kept",
    2: "shorter than always-skip, but the first: kept",
    21: "two full pieces + 1 token: the 1 is dropped",
    25: "two full pieces + 5: backfilled from the second",
    27: "two full pieces + 7 >= min chunk: kept as is",
    30: "exactly three full pieces",
    10: "exactly one full piece",
}


@pytest.mark.parametrize("layout", ["document", "packed"])
def test_hand_made_documents_are_chunked_as_ettin_did(tmp_path, layout):
    rng = numpy.random.default_rng(0)
    bodies = [rng.integers(0, 1000, n).tolist() for n in HAND_MADE for _ in range(20)]
    prefix = write_bodies(tmp_path, "hand", bodies)
    cfg = config(prefix, layout=layout, objective="clm", sequence_length=12, min_chunk_size=6, always_skip_size=3)
    dataset = train(cfg)
    chunks = chunk_tokens(dataset)
    assert sorted(chunks) == list(range(len(bodies)))
    rules, shifts = cfg.chunk_rules(), []
    for document, body in enumerate(bodies):
        shift = int(rules.shifts(numpy.array([len(body)]), numpy.array([document]))[0])
        assert chunks[document] == ettin_pieces(body, 10, 6, 3, shift), (len(body), HAND_MADE[len(body)])
        if len(body) == 25:
            shifts.append(shift)
        else:
            assert shift == 0
    assert len(set(shifts)) > 2  # a random amount, per document


def test_packed_layout_packs_the_document_layouts_chunks_greedily_in_order(tmp_path):
    prefix, _ = write_prefix(str(tmp_path), "docs", 80, max_len=70, seed=4)
    cfg = dict(objective="clm", sequence_length=24)
    chunked = chunk_tokens(train(config(prefix, layout="document", **cfg)))
    packed = train(config(prefix, layout="packed", **cfg))
    assert chunk_tokens(packed) == chunked
    order = numpy.argsort(packed.shuffle_index)  # reading order
    for i, j in zip(order[:-1], order[1:]):  # greedy: the next sample's first chunk did not fit
        first_of_next = packed[j]["segment_lengths"][0]
        assert len(packed[i]["tokens"]) + first_of_next > 24
    assert len(packed) < sum(map(len, chunked.values()))


@pytest.mark.parametrize("layout", ["document", "packed"])
def test_samples_do_not_depend_on_the_build_block_size(tmp_path, monkeypatch, layout):
    """The index build walks the documents in blocks (sample_index.BLOCK, 65,536 documents); a packed
    sample that spans two blocks is carried over. Blocks of 3 documents give the same samples."""
    prefix, _ = write_prefix(str(tmp_path), "docs", 200, max_len=70, seed=6)
    build = lambda cache: train(config(prefix, layout=layout, objective="clm", sequence_length=24,
                                       path_to_cache=str(tmp_path / cache)))
    whole = build("one_block")
    monkeypatch.setattr(sample_index, "BLOCK", 3)
    blocks = build("blocks_of_3")
    assert len(blocks) == len(whole) and numpy.array_equal(blocks.sample_index, whole.sample_index)
    assert all(blocks.pieces(i) == whole.pieces(i) for i in range(len(whole)))


@pytest.mark.parametrize("layout", ["document", "packed"])
@pytest.mark.parametrize("sequence_length", [16, 48])
def test_every_token_is_in_exactly_one_sample_per_epoch(tmp_path, layout, sequence_length):
    prefix, _ = write_prefix(str(tmp_path), "docs", 150, min_len=3, max_len=300, seed=5)
    dataset = train(config(prefix, layout=layout, objective="clm", sequence_length=sequence_length), 1)
    rules = dataset.config.chunk_rules()
    stored = IndexedDataset(prefix)  # the independent reader
    covered = [numpy.zeros(len(stored[d]), int) for d in range(len(stored))]
    for i in range(len(dataset)):
        sample = dataset[i]
        tokens = numpy.concatenate([[CLS] + stored[d][o : o + n].tolist() + [SEP] for d, o, n in dataset.pieces(i)])
        assert numpy.array_equal(sample["tokens"], tokens)
        for d, o, n in dataset.pieces(i):
            covered[d][o : o + n] += 1
    for document, count in enumerate(covered):
        body = count[1:-1]  # the stored [CLS] / [SEP] are re-framed per chunk, never read
        assert count[0] == count[-1] == 0
        dropped = int(rules.dropped(numpy.array([len(body)]))[0])
        assert (body[: len(body) - dropped] == 1).all() and (body[len(body) - dropped :] == 0).all()
        assert dropped < rules.always_skip_size


@pytest.mark.parametrize("stored", ["bare", "sep_only", "framed"])
def test_documents_are_framed_once_however_they_were_stored(tmp_path, stored):
    """tools/preprocess_data.py stores [CLS] body [SEP]; Megatron-LM's tool stores bare bodies, or
    body [EOD] with --append-eod (EOD = [SEP] for a BERT tokenizer): every chunk is [CLS] piece [SEP]."""
    lead, trail = {"bare": ((), ()), "sep_only": ((), (SEP,)), "framed": ((CLS,), (SEP,))}[stored]
    rng = numpy.random.default_rng(1)
    bodies = [rng.integers(0, 1000, n).tolist() for n in rng.integers(1, 60, 40)]
    prefix = write_bodies(tmp_path, stored, bodies, lead, trail)
    dataset = train(config(prefix, layout="document", objective="clm", sequence_length=16))
    assert dataset.framing == (len(lead), len(trail))
    chunks = chunk_tokens(dataset)
    assert [sum(chunks[d], []) for d in range(len(bodies))] == [
        b[: len(b) - int(dataset.config.chunk_rules().dropped(numpy.array([len(b)]))[0])] for b in bodies]


def test_mixed_framing_is_refused(tmp_path):
    prefix = os.path.join(str(tmp_path), "mixed")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    for i in range(10):
        builder.add_document(numpy.array([CLS, 5, 6, SEP] if i % 2 else [5, 6, 7]), [4 if i % 2 else 3])
    builder.finalize(prefix + ".idx")
    with pytest.raises(ConfigError, match="some documents start with"):
        train(config(prefix))


def test_chunk_sizes_scale_with_short_sequences_and_are_checked():
    assert (config("p", sequence_length=1024).min_chunk_size, config("p", sequence_length=1024).always_skip_size) == (512, 128)
    assert (config("p", sequence_length=7999).min_chunk_size, config("p", sequence_length=7999).always_skip_size) == (512, 128)
    assert (config("p", sequence_length=32).min_chunk_size, config("p", sequence_length=32).always_skip_size) == (16, 4)
    with pytest.raises(ConfigError, match="always_skip_size .* <= min_chunk_size"):
        config("p", sequence_length=32, min_chunk_size=4, always_skip_size=8)
    with pytest.raises(ConfigError, match="at least 3"):
        config("p", sequence_length=2)
    assert config("p", sequence_length=2, layout="concat").sequence_length == 2  # concat does not chunk


def test_chunk_flags_reach_the_dataset_and_bad_ones_fail_before_any_compute(corpus_prefix):
    from ettin_megatron.training.arguments import parse_args
    from ettin_megatron.training.batching import run_datasets
    from ettin_megatron.training.plan import plan_run

    flags = ["--data-path", corpus_prefix, "--train-iters", "1", "--seq-length", "32", "--split", "100,0,0",
             "--tokenizer-model", write_tokenizer(os.path.dirname(corpus_prefix))]
    plan = plan_run(parse_args(flags + ["--min-chunk-size", "10", "--always-skip-size", "2"]), 1)
    trained, _ = run_datasets(plan, 10, 0)
    assert (trained.config.min_chunk_size, trained.config.always_skip_size) == (10, 2)
    with pytest.raises(ConfigError, match="always_skip_size \\(20\\) <= min_chunk_size"):
        plan_run(parse_args(flags + ["--always-skip-size", "20"]), 1)


@pytest.fixture
def corpus_prefix(tmp_path):
    return write_prefix(str(tmp_path), "docs", 30)[0]
