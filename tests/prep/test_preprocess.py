"""Preprocessing output, read back with megatron-core's IndexedDataset, equals the tokenizer's encoding."""

import gzip
import os

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from ettin_megatron.prep.framing import eod_id
from ettin_megatron.prep.merge import merge_datasets
from ettin_megatron.prep.preprocess import PreprocessConfig, preprocess
from ettin_megatron.prep.sentences import sentence_splitter
from tests.texts import training_texts, write_jsonl

LONG = " ".join(training_texts(300)) * 20  # ~400k characters in one document

CORPUS = [
    "Hello world. This is the first document.",
    "Unicode: naïve café, e\u0301 (combining), 東京 and 🙂🚀; RTL שלום.",
    "",
    LONG,
    "   \n\t  ",
    "Line breaks stay inside a document:\nline two\r\nline three\u2028line four.",
    "Dr. Smith went home. He slept! Did he dream? Yes.\n\nA new paragraph starts here.",
    "\n",
    "x",
] + [f"Short document number {i}. It has two sentences." for i in range(40)]

NONEMPTY = [t for t in CORPUS if t.strip()]


def documents(prefix):
    """[[sequence ids, ...] per document] from the independent reader."""
    dataset = IndexedDataset(prefix)
    bounds = dataset.document_indices
    return [[dataset[i].tolist() for i in range(bounds[d], bounds[d + 1])] for d in range(len(bounds) - 1)]


def run(tmp_path, tokenizer_dir, name="out", input_path=None, **options):
    input_path = input_path or write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in CORPUS])
    config = PreprocessConfig(input=input_path, output_prefix=str(tmp_path / name),
                              tokenizer_model=tokenizer_dir, log_interval=0, **options)
    return preprocess(config)


@pytest.mark.parametrize("wrap,append_eod", [(True, False), (False, False), (False, True)])
def test_document_mode_is_the_tokenizers_encoding(tmp_path, tokenizer_dir, tokenizer, wrap, append_eod):
    summary = run(tmp_path, tokenizer_dir, wrap=wrap, append_eod=append_eod, chunk_size=5)
    eod = [eod_id(tokenizer)] if append_eod else []
    expected = [[tokenizer.encode(t, add_special_tokens=wrap).ids + eod] for t in NONEMPTY]
    assert documents(summary.outputs["text"]) == expected
    assert summary.outputs["text"] == str(tmp_path / "out_text_document")
    # The documented rule: empty and whitespace-only documents are skipped and counted.
    assert (summary.records, summary.documents, summary.empty) == (len(CORPUS), len(NONEMPTY), 3)
    assert summary.tokens == sum(len(d[0]) for d in expected)
    if wrap:
        assert expected[0][0][0] == tokenizer.token_to_id("[CLS]")
        assert expected[0][0][-1] == tokenizer.token_to_id("[SEP]")


@pytest.mark.parametrize("keep_newlines", [False, True])
def test_sentence_mode_one_sequence_per_sentence(tmp_path, tokenizer_dir, tokenizer, keep_newlines):
    summary = run(tmp_path, tokenizer_dir, split_sentences=True, keep_newlines=keep_newlines)
    split = sentence_splitter(keep_newlines)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    expected = []
    for text in NONEMPTY:
        sequences = [tokenizer.encode(s, add_special_tokens=False).ids for s in split(text)]
        sequences[0] = [cls] + sequences[0]
        sequences[-1] = sequences[-1] + [sep]
        expected.append(sequences)
    got = documents(summary.outputs["text"])
    assert got == expected
    assert summary.outputs["text"].endswith("out_text_sentence")
    assert max(len(d) for d in got) > 1  # some documents really were split


def _read_bytes(prefix):
    return [open(prefix + ext, "rb").read() for ext in (".bin", ".idx")]


def test_output_bytes_do_not_depend_on_workers_or_chunking(tmp_path, tokenizer_dir):
    one = run(tmp_path, tokenizer_dir, name="w1", workers=1, chunk_size=1000)
    four = run(tmp_path, tokenizer_dir, name="w4", workers=4, chunk_size=3)
    assert _read_bytes(one.outputs["text"]) == _read_bytes(four.outputs["text"])


def test_merge_equals_preprocessing_the_concatenation(tmp_path, tokenizer_dir):
    parts = tmp_path / "parts"
    parts.mkdir()
    half = len(CORPUS) // 2
    first = write_jsonl(parts / "a.jsonl", [{"text": t} for t in CORPUS[:half]])
    second = write_jsonl(parts / "b.jsonl", [{"text": t} for t in CORPUS[half:]])
    a = run(tmp_path, tokenizer_dir, name="a", input_path=first).outputs["text"]
    b = run(tmp_path, tokenizer_dir, name="b", input_path=second).outputs["text"]
    merged = str(tmp_path / "merged")
    counts = merge_datasets([a, b], merged)
    whole = run(tmp_path, tokenizer_dir, name="whole", input_path=str(parts), workers=2)
    assert _read_bytes(merged) == _read_bytes(whole.outputs["text"])
    assert counts["documents"] == len(NONEMPTY)


def _compressed_inputs(tmp_path):
    """The corpus as .jsonl.gz, .jsonl.zst and .parquet (skipping formats whose library is absent)."""
    raw = open(write_jsonl(tmp_path / "plain.jsonl", [{"text": t} for t in CORPUS]), "rb").read()
    with gzip.open(tmp_path / "c.jsonl.gz", "wb") as f:
        f.write(raw)
    yield str(tmp_path / "c.jsonl.gz")
    zstandard = pytest.importorskip("zstandard")
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    yield str(tmp_path / "c.jsonl.zst")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": CORPUS}), tmp_path / "c.parquet", row_group_size=7)
    yield str(tmp_path / "c.parquet")


def test_compressed_and_parquet_inputs_give_the_same_dataset(tmp_path, tokenizer_dir):
    reference = _read_bytes(run(tmp_path, tokenizer_dir, name="ref").outputs["text"])
    for index, path in enumerate(_compressed_inputs(tmp_path)):
        summary = run(tmp_path, tokenizer_dir, name=f"fmt{index}", input_path=path, chunk_size=4)
        assert _read_bytes(summary.outputs["text"]) == reference, path


def test_several_json_keys_give_one_dataset_each(tmp_path, tokenizer_dir, tokenizer):
    records = [{"title": f"Title {i}", "text": t} for i, t in enumerate(CORPUS)]
    path = write_jsonl(tmp_path / "keys.jsonl", records)
    summary = run(tmp_path, tokenizer_dir, input_path=path, json_keys=("title", "text"))
    titles = documents(summary.outputs["title"])
    assert titles == [[tokenizer.encode(f"Title {i}").ids] for i in range(len(CORPUS))]
    assert len(documents(summary.outputs["text"])) == len(NONEMPTY)


def test_token_dtype_follows_the_vocabulary(tmp_path, tokenizer_dir):
    dataset = IndexedDataset(run(tmp_path, tokenizer_dir).outputs["text"])
    assert dataset.index.dtype == np.uint16
    assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl", "out_text_document.bin", "out_text_document.idx",
                                            "out_text_document.meta.json"]


def test_input_is_streamed_with_bounded_read_ahead(tmp_path, tokenizer_dir, monkeypatch):
    """Memory stays flat: the reader is at most a few chunks ahead of the writer, however long the
    input (Pool.imap, by contrast, reads the whole input ahead)."""
    from ettin_megatron.prep import preprocess as preprocess_module
    from ettin_megatron.prep import readers

    read, lead = [0], []
    real_iter, real_write = readers.iter_chunks, preprocess_module._write

    def counting_iter(*args, **kwargs):
        for chunk in real_iter(*args, **kwargs):
            read[0] += 1
            yield chunk

    def recording_write(builder, enc, summary):
        lead.append(read[0] - summary.records)  # chunk_size 1: one record per chunk
        real_write(builder, enc, summary)

    monkeypatch.setattr(readers, "iter_chunks", counting_iter)
    monkeypatch.setattr(preprocess_module, "_write", recording_write)
    path = write_jsonl(tmp_path / "many.jsonl", [{"text": f"doc {i}"} for i in range(200)])
    run(tmp_path, tokenizer_dir, input_path=path, chunk_size=1, workers=2)
    assert len(lead) == 200 and max(lead) <= 2 * 2 + 1


@pytest.mark.parametrize("as_special", [False, True])
def test_special_token_strings_in_raw_text_are_text_unless_asked(tmp_path, tokenizer_dir, tokenizer, as_special):
    """Issue 27, item 10: a web page that says "[MASK]" became the mask id, and "[SEP]" a document frame.
    By default such strings are text; --special-token-strings keeps Megatron-LM's reading (byte identity
    with its tool), and the record says which rule the prefix used."""
    from ettin_megatron.commands.preprocess_data import main
    from ettin_megatron.data.dataset_info import read_info

    text = "Fill in the [MASK] here. [SEP] is not the end, nor is [CLS] a start."
    corpus = write_jsonl(tmp_path / "web.jsonl", [{"text": text}])
    argv = ["--input", corpus, "--output-prefix", str(tmp_path / "web"), "--tokenizer-model", tokenizer_dir,
            "--log-interval", "0"] + (["--special-token-strings"] if as_special else [])
    assert main(argv) == 0
    prefix = str(tmp_path / "web_text_document")
    (ids,), = documents(prefix)
    specials = {tokenizer.token_to_id(t) for t in ("[MASK]", "[SEP]", "[CLS]")}
    inner = set(ids[1:-1])
    assert (ids[0], ids[-1]) == (tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]"))
    assert (inner & specials == specials) if as_special else not inner & specials, ids
    assert read_info(prefix).framing["split_special_tokens"] is (not as_special)
