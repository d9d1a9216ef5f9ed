"""The record beside each dataset (<prefix>.meta.json): what preprocess and merge write, checked
against megatron-core's IndexedDataset and the tokenizer itself; the tokenizer fingerprint; stale and
mixed records refused in one line; the sampled largest id of a prefix without a record."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from ettin_megatron.data import dataset_info
from ettin_megatron.data.dataset_info import read_info, sampled_max_token_id
from ettin_megatron.data.tokenizer import tokenizer_fingerprint
from ettin_megatron.errors import InputError
from ettin_megatron.prep.inspect import inspect_dataset
from ettin_megatron.prep.merge import merge_datasets
from ettin_megatron.prep.preprocess import PreprocessConfig, preprocess
from tests.texts import other_tokenizer, training_texts, write_jsonl


def make(tmp_path, tokenizer_dir, name, count=30, **options):
    path = write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t} for t in training_texts(count)])
    config = PreprocessConfig(input=path, output_prefix=str(tmp_path / name), tokenizer_model=tokenizer_dir,
                              log_interval=0, **options)
    return preprocess(config).outputs["text"]


def all_tokens(prefix) -> np.ndarray:
    dataset = IndexedDataset(prefix)
    return np.concatenate([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("options, framing", [
    (dict(), ("[CLS]", "[SEP]")), (dict(wrap=False), (None, None)), (dict(wrap=False, append_eod=True), (None, "[SEP]")),
])
def test_preprocess_records_what_made_the_data(tmp_path, tokenizer_dir, tokenizer, options, framing):
    prefix = make(tmp_path, tokenizer_dir, "ds", **options)
    record = json.loads(open(prefix + ".meta.json").read())
    dataset, tokens = IndexedDataset(prefix), all_tokens(prefix)
    assert record["tokenizer"] == {"sha256": tokenizer_fingerprint(tokenizer_dir),
                                   "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True)}
    assert record["documents"] == len(dataset.document_indices) - 1 == 30
    assert record["sequences"] == len(dataset) and record["tokens"] == len(tokens)
    assert record["max_token_id"] == int(tokens.max())
    ids = [[tokenizer.token_to_id(t)] if t else [] for t in framing]
    assert record["framing"] == dict(wrap=options.get("wrap", True), append_eod=options.get("append_eod", False),
                                     prefix=ids[0], suffix=ids[1], split_special_tokens=True)
    assert record["level"] == "document" and record["tool"] == "tools/preprocess_data.py"
    assert sorted(os.listdir(tmp_path)) == ["ds.jsonl", "ds_text_document.bin", "ds_text_document.idx",
                                            "ds_text_document.meta.json"]  # no temporary left


def test_fingerprint_is_the_content_not_the_path(tmp_path, tokenizer_dir):
    moved = tmp_path / "moved"
    shutil.copytree(tokenizer_dir, moved)
    content = json.loads((moved / "tokenizer.json").read_text())
    content["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    (moved / "tokenizer.json").write_text(json.dumps(content, indent=4))  # re-indented, truncation on
    assert tokenizer_fingerprint(str(moved)) == tokenizer_fingerprint(tokenizer_dir)
    assert tokenizer_fingerprint(str(moved / "tokenizer.json")) == tokenizer_fingerprint(tokenizer_dir)
    assert tokenizer_fingerprint(other_tokenizer(tokenizer_dir, tmp_path)) != tokenizer_fingerprint(tokenizer_dir)


def test_merge_records_the_concatenation(tmp_path, tokenizer_dir):
    a, b = make(tmp_path, tokenizer_dir, "a", 20), make(tmp_path, tokenizer_dir, "b", 30)
    merge_datasets([a, b], str(tmp_path / "ab"))
    merged, tokens = read_info(str(tmp_path / "ab")), all_tokens(str(tmp_path / "ab"))
    assert (merged.documents, merged.tokens, merged.max_token_id) == (50, len(tokens), int(tokens.max()))
    assert merged.tokenizer == read_info(a).tokenizer and merged.tool == "tools/merge_datasets.py"
    report = inspect_dataset(str(tmp_path / "ab"), samples=0)
    assert f"tokenizer sha256 {tokenizer_fingerprint(tokenizer_dir)[:16]}, {merged.tokenizer.vocab_size} tokens" in report
    assert f"per document (document level); max token id {int(tokens.max())}" in report


def test_merge_refuses_other_tokenizers_and_unrecorded_inputs(tmp_path, tokenizer_dir):
    a = make(tmp_path, tokenizer_dir, "a")
    b = make(tmp_path, other_tokenizer(tokenizer_dir, tmp_path), "b")
    with pytest.raises(InputError, match=f"^{re.escape(b)} was made with another tokenizer than {re.escape(a)} "):
        merge_datasets([a, b], str(tmp_path / "ab"))
    os.remove(b + ".meta.json")  # now as Megatron-LM's tool leaves it
    with pytest.raises(InputError, match=f"^{re.escape(b)} has no .meta.json record"):
        merge_datasets([a, b], str(tmp_path / "ab"))
    os.remove(a + ".meta.json")
    merge_datasets([a, b], str(tmp_path / "ab"))  # Megatron-LM inputs give a Megatron-LM output
    assert IndexedDataset.exists(str(tmp_path / "ab")) and not os.path.exists(str(tmp_path / "ab.meta.json"))


def test_a_stale_record_is_refused(tmp_path, tokenizer_dir):
    prefix = make(tmp_path, tokenizer_dir, "ds")
    old_record = open(prefix + ".meta.json").read()
    make(tmp_path, tokenizer_dir, "ds", count=40)  # rewritten (as another tool would, minus the record)
    open(prefix + ".meta.json", "w").write(old_record)
    with pytest.raises(InputError, match=f"describes 30 documents, 30 sequences and .* but {re.escape(prefix)}.bin/.idx "
                                         "hold 40, 40 and"):
        read_info(prefix)


def test_sampled_max_id_reads_spread_windows_or_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_info, "SAMPLE_WINDOWS", 4)
    monkeypatch.setattr(dataset_info, "WINDOW_TOKENS", 10)
    prefix = str(tmp_path / "ds")

    def write(tokens):
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
        builder.add_document(np.asarray(tokens), [len(tokens)])
        builder.finalize(prefix + ".idx")
        return sampled_max_token_id(prefix, IndexedDataset(prefix))

    small = np.arange(40) % 7
    small[23] = 900
    assert write(small) == 900  # 40 tokens <= 4 windows x 10: all read
    spread = np.zeros(1000, dtype=np.int64)
    spread[::50] = 700  # a large tokenizer's ids are everywhere
    assert write(spread) == 700
    rare = np.zeros(1000, dtype=np.int64)
    rare[500] = 700  # between windows [0,10) [330,340) [660,670) [990,1000): the model's check stops it
    assert write(rare) == 0
