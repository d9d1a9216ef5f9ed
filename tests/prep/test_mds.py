"""MDS shards -> indexed datasets, against shards written by mosaicml-streaming's own MDSWriter
(fixtures/mds, with their expected contents) and read back with megatron-core's IndexedDataset."""

import json
import math
import os
import re
import shutil

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from ettin_megatron.errors import InputError
from ettin_megatron.prep.preprocess import PreprocessConfig, preprocess
from ettin_megatron.vocab import MODERNBERT_IDS
from tests.prep.mds_writer import id_tokenizer, write_mds
from tests.prep.test_errors import assert_no_output
from tests.prep.test_tools import tool
from tests.ranks import run_ranks
from tests.texts import write_jsonl
from tests.training.training_data import CLS, SEP, base_args, corpus_bodies, write_tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "mds")
EXPECTED = np.load(os.path.join(FIXTURES, "expected.npz"), allow_pickle=True)
TOKENIZED = ["tokenized", "tokenized-merged", "tokenized-uint16-raw", "tokenized-dynamic"]
MODERNBERT_CLS, MODERNBERT_SEP = MODERNBERT_IDS.cls, MODERNBERT_IDS.sep


@pytest.fixture(scope="module")
def ids_tokenizer(tmp_path_factory):
    """ModernBERT's vocabulary size and [CLS]/[SEP] ids, without the real tokenizer."""
    return id_tokenizer(str(tmp_path_factory.mktemp("ids_tok")), MODERNBERT_IDS.vocab_size, MODERNBERT_CLS,
                        MODERNBERT_SEP)


def convert(tmp_path, source, tokenizer, name="out", keys=("input_ids",), **options):
    config = PreprocessConfig(input=str(source), output_prefix=str(tmp_path / "out" / name),
                              tokenizer_model=tokenizer, json_keys=list(keys), log_interval=0, **options)
    return preprocess(config)


def documents(prefix):
    dataset = IndexedDataset(prefix)
    return [dataset[i].astype(np.int64) for i in range(len(dataset))]


def expected_documents(name):
    lengths = EXPECTED[f"{name}_lengths"]
    return np.split(EXPECTED[f"{name}_ids"], np.cumsum(lengths)[:-1])


def file_bytes(prefix):
    return [open(prefix + ext, "rb").read() for ext in (".bin", ".idx")]


def test_writer_helper_rewrites_the_reference_shards_byte_for_byte(tmp_path):
    source = os.path.join(FIXTURES, "tokenized-uint16-raw")
    rows = [{"input_ids": ids.astype(np.uint16), "id": str(i)} for i, ids in enumerate(expected_documents(
        "tokenized-uint16-raw"))]
    write_mds(str(tmp_path), {"input_ids": "ndarray:uint16", "id": "str"}, rows, size_limit=1 << 14,
              hashes=["sha1"])
    assert sorted(os.listdir(tmp_path)) == sorted(os.listdir(source))
    for name in os.listdir(source):
        mine, reference = (open(os.path.join(d, name), "rb").read() for d in (tmp_path, source))
        assert (json.loads(mine) == json.loads(reference)) if name.endswith(".json") else mine == reference


@pytest.mark.parametrize("name", TOKENIZED)
def test_token_ids_are_copied_unchanged(tmp_path, ids_tokenizer, name):
    summary = convert(tmp_path, os.path.join(FIXTURES, name), ids_tokenizer, workers=2)
    docs = documents(summary.outputs["input_ids"])
    expected = expected_documents(name)
    assert len(docs) == len(expected) == summary.records == summary.documents  # merged: parts once
    assert all(np.array_equal(d, e) for d, e in zip(docs, expected))
    assert IndexedDataset(summary.outputs["input_ids"]).index.dtype == np.uint16  # fits ModernBERT's ids


@pytest.mark.parametrize("name,framing", [("tokenized-uint16-raw", "wrap"), ("tokenized", "wrap"),
                                          ("tokenized", "strip"), ("tokenized-uint16-raw", "strip")])
def test_framing_is_added_or_removed_where_needed(tmp_path, ids_tokenizer, name, framing):
    docs = documents(convert(tmp_path, os.path.join(FIXTURES, name), ids_tokenizer,
                             ids_framing=framing).outputs["input_ids"])
    framed = name == "tokenized"
    for doc, ids in zip(docs, expected_documents(name)):
        body = ids[1:-1] if framed else ids
        want = np.concatenate([[MODERNBERT_CLS], body, [MODERNBERT_SEP]]) if framing == "wrap" else body
        assert np.array_equal(doc, want)


def test_record_beside_the_output_says_how_ids_were_framed(tmp_path, ids_tokenizer):
    prefix = convert(tmp_path, os.path.join(FIXTURES, "tokenized-uint16-raw"), ids_tokenizer,
                     ids_framing="wrap").outputs["input_ids"]
    record = json.load(open(prefix + ".meta.json"))
    assert record["framing"] == dict(ids_framing="wrap", append_eod=False, prefix=[MODERNBERT_CLS],
                                     suffix=[MODERNBERT_SEP])
    assert record["max_token_id"] == MODERNBERT_SEP > EXPECTED["tokenized-uint16-raw_ids"].max()
    assert record["documents"] == len(EXPECTED["tokenized-uint16-raw_lengths"])


def test_strip_with_append_eod_ends_documents_with_sep(tmp_path, ids_tokenizer):
    summary = convert(tmp_path, os.path.join(FIXTURES, "tokenized"), ids_tokenizer, ids_framing="strip",
                      wrap=False, append_eod=True)
    for doc, ids in zip(documents(summary.outputs["input_ids"]), expected_documents("tokenized")):
        assert np.array_equal(doc, np.concatenate([ids[1:-1], [MODERNBERT_SEP]]))


def test_text_shards_equal_the_jsonl_path(tmp_path, tokenizer_dir):
    texts = EXPECTED["text_text"].tolist()
    jsonl = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    from_jsonl = convert(tmp_path, jsonl, tokenizer_dir, name="jsonl", keys=["text"])
    from_mds = convert(tmp_path, os.path.join(FIXTURES, "text"), tokenizer_dir, name="mds", keys=["text"])
    empty = sum(not t.strip() for t in texts)
    assert from_mds.empty == from_jsonl.empty == empty > 0 and from_mds.records == len(texts)
    assert file_bytes(from_mds.outputs["text"]) == file_bytes(from_jsonl.outputs["text"])


@pytest.mark.parametrize("name,key", [("tokenized", "input_ids"), ("text", "text")])
def test_output_bytes_do_not_depend_on_workers(tmp_path, ids_tokenizer, tokenizer_dir, name, key):
    tokenizer = ids_tokenizer if key == "input_ids" else tokenizer_dir
    one, two = (convert(tmp_path, os.path.join(FIXTURES, name), tokenizer, name=f"w{n}", keys=[key], workers=n)
                for n in (1, 2))
    assert file_bytes(one.outputs[key]) == file_bytes(two.outputs[key])


def test_hashes_are_verified_including_xxhash(tmp_path, ids_tokenizer):
    rows = [{"input_ids": np.arange(1, n, dtype=np.uint32), "id": str(n)} for n in range(2, 40)]
    write_mds(str(tmp_path / "src"), {"input_ids": "ndarray:uint32", "id": "str"}, rows, compression="zstd",
              size_limit=1 << 9, hashes=["xxh64", "md5"])
    docs = documents(convert(tmp_path, tmp_path / "src", ids_tokenizer).outputs["input_ids"])
    assert [d.tolist() for d in docs] == [r["input_ids"].tolist() for r in rows]
    shard = tmp_path / "src" / "shard.00001.mds.zstd"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"^{shard}: md5 hash differs"):
        convert(tmp_path, tmp_path / "src", ids_tokenizer)


def test_a_stale_root_index_is_refused(tmp_path, ids_tokenizer):
    source = shutil.copytree(os.path.join(FIXTURES, "tokenized-merged"), tmp_path / "src")
    root = json.loads((source / "index.json").read_text())
    root["shards"] = root["shards"][:-1]  # forgets part_1's last shard
    (source / "index.json").write_text(json.dumps(root))
    with pytest.raises(InputError, match="part_1/index.json: lists .*shard.00004.mds.zstd.* stale"):
        convert(tmp_path, source, ids_tokenizer)


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _flip(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _bad_offsets(path):
    data = bytearray(open(path, "rb").read())
    data[8:12] = np.uint32(1 << 30).tobytes()  # the second sample's offset, beyond the file
    open(path, "wb").write(bytes(data))


#: problem -> (break the copied fixture, the shard named, what the message says)
BROKEN = {
    "truncated": ("tokenized", _truncate, "part_1/shard.00002.mds.zstd", "bytes, but .* says"),
    "missing": ("tokenized", os.remove, "part_1/shard.00002.mds.zstd", "listed in .*part_1/index.json but missing"),
    "wrong hash": ("tokenized", _flip, "part_1/shard.00002.mds.zstd", "sha1 hash differs from"),
    "corrupt, no hash": ("tokenized-uint16-raw", _bad_offsets, "shard.00000.mds", "offsets .* \\(corrupt shard\\)"),
}


def _broken_copy(tmp_path, problem):
    name, breaks, shard, match = BROKEN[problem]
    source = shutil.copytree(os.path.join(FIXTURES, name), tmp_path / "src")
    if problem == "corrupt, no hash":
        index = json.loads((source / "index.json").read_text())
        for entry in index["shards"]:
            entry["hashes"], entry["raw_data"]["hashes"] = [], {}
        (source / "index.json").write_text(json.dumps(index))
    breaks(str(source / shard))
    return source, str(source / shard), match


@pytest.mark.parametrize("problem", sorted(BROKEN))
def test_bad_shard_is_one_line_naming_it_and_leaves_no_output(tmp_path, ids_tokenizer, problem):
    source, shard, match = _broken_copy(tmp_path, problem)
    with pytest.raises(InputError) as excinfo:
        convert(tmp_path, source, ids_tokenizer, workers=2)
    message = str(excinfo.value)
    assert message.startswith(f"{shard}: ") and "\n" not in message, message
    assert re.search(match, message), message
    assert_no_output(tmp_path)


@pytest.mark.parametrize("problem", sorted(BROKEN))
def test_skip_invalid_skips_the_shard_and_counts_it(tmp_path, ids_tokenizer, problem):
    source, _, _ = _broken_copy(tmp_path, problem)
    name, _, shard, _ = BROKEN[problem]
    summary = convert(tmp_path, source, ids_tokenizer, skip_invalid=True)
    start, count = _samples_before_and_in(name, shard)
    expected = expected_documents(name)
    del expected[start : start + count]
    docs = documents(summary.outputs["input_ids"])
    assert (summary.invalid, summary.records, len(docs)) == (1, len(expected), len(expected))
    assert all(np.array_equal(d, e) for d, e in zip(docs, expected))


def _samples_before_and_in(name, shard):
    """Where `shard`'s samples sit in the fixture's expected order: (first sample, sample count)."""
    before = 0
    for folder in sorted({os.path.dirname(shard), "part_0"} if "/" in shard else {""}):
        with open(os.path.join(FIXTURES, name, folder, "index.json")) as f:
            for entry in json.load(f)["shards"]:
                if os.path.join(folder, entry["zip_data"]["basename"] if entry["zip_data"] else
                                entry["raw_data"]["basename"]) == shard:
                    return before, entry["samples"]
                before += entry["samples"]
    raise AssertionError(shard)


def test_missing_column_names_the_shard_before_any_work(tmp_path, ids_tokenizer):
    with pytest.raises(InputError, match=r"part_0/shard.00000.mds.zstd: no column 'text' \(columns: id, input_ids\)"):
        convert(tmp_path, os.path.join(FIXTURES, "tokenized"), ids_tokenizer, keys=["text"])
    assert_no_output(tmp_path)


def test_ids_beyond_the_vocabulary_name_the_shard_and_sample(tmp_path, tokenizer_dir):
    with pytest.raises(InputError, match=rf"part_0/shard.00000.mds.zstd: sample 0 holds token id {MODERNBERT_CLS}, "
                                         r"outside the tokenizer's vocabulary of \d+ "):
        convert(tmp_path, os.path.join(FIXTURES, "tokenized"), tokenizer_dir, workers=2)
    assert_no_output(tmp_path)


def test_cli_reports_progress_with_tokens_per_second(tmp_path, ids_tokenizer, capsys):
    argv = ["--input", os.path.join(FIXTURES, "tokenized"), "--json-keys", "input_ids", "--tokenizer-model",
            ids_tokenizer, "--output-prefix", str(tmp_path / "ds"), "--workers", "1", "--log-interval", "100"]
    assert tool("preprocess_data").main(argv) == 0
    err = capsys.readouterr().err
    assert "tokens/s" in err.splitlines()[0] and "ETA" in err and "240 records -> 240 documents" in err


def _train(rank, prefix):
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    return [row for row in pretrain(make_arguments(**base_args(prefix, train_iters=3)))
            if "loss" in row]


def test_tiny_model_trains_from_mds_shards(tmp_path):
    bodies = list(corpus_bodies(num_docs=200))
    write_mds(str(tmp_path / "mds" / "part_0"), {"input_ids": "ndarray:uint32", "id": "str"},
              [{"input_ids": b.astype(np.uint32), "id": str(i)} for i, b in enumerate(bodies)],
              compression="zstd", size_limit=1 << 12, hashes=["sha1"])
    os.makedirs(tmp_path / "tok")  # the run's own tokenizer (base_args writes the same beside the data)
    tokenizer = write_tokenizer(tmp_path / "tok")
    prefix = convert(tmp_path, tmp_path / "mds", tokenizer, ids_framing="wrap").outputs["input_ids"]
    assert [d.tolist() for d in documents(prefix)] == [[CLS, *b.tolist(), SEP] for b in bodies]
    steps = run_ranks(1, _train, prefix)[0]
    assert len(steps) == 3 and all(math.isfinite(row["loss"]) for row in steps)
