"""The command-line tools, the offline sample corpus and tokenizer builders, and the real tokenizer."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from ettin_megatron.data.tokenizer import load_tokenizer, ordinary_ids, special_ids, tokenizer_fingerprint
from ettin_megatron.prep.preprocess import PreprocessConfig, preprocess
from ettin_megatron.prep.sample_corpus import build_sample_corpus
from ettin_megatron.prep.train_tokenizer import train_tokenizer
from ettin_megatron.vocab import MODERNBERT_IDS
from tests.texts import MODERNBERT_DIR, other_tokenizer, training_texts, write_jsonl

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def tool(name):
    """Import tools/<name>.py (the tools folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_corpus_is_deterministic_english_text(tmp_path):
    first = tmp_path / "a.jsonl"
    assert tool("build_sample_corpus").main(["--output", str(first)]) == 0
    counts = build_sample_corpus(str(tmp_path / "b.jsonl"))
    assert first.read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    records = [json.loads(line) for line in first.read_text(encoding="utf-8").splitlines()]
    assert counts == {"documents": len(records), "bytes": first.stat().st_size}
    assert 1_000_000 < counts["bytes"] < 4_000_000
    assert [r["id"] for r in records] == list(range(len(records)))
    assert records[0]["source"].startswith("pydoc_data:")
    assert any(r["source"].startswith("stdlib:json") for r in records)
    assert all(isinstance(r["text"], str) and r["text"].strip() for r in records)
    assert " the " in records[0]["text"]


def test_tokenizer_training_is_deterministic_and_modernbert_shaped(tmp_path):
    corpus = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in training_texts(200)])
    tool("train_tokenizer").main(["--input", corpus, "--output-dir", str(tmp_path / "a"),
                                  "--vocab-size", "448"])
    train_tokenizer([corpus], str(tmp_path / "b"), vocab_size=448)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    tokenizer = load_tokenizer(str(tmp_path / "a"))
    ids = special_ids(tokenizer)
    assert ids.vocab_size == 448 and ids.padded_vocab_size == 448
    # Specials sit at the end of the vocabulary, as in ModernBERT (ordinary tokens are below them).
    assert sorted([ids.unk, ids.cls, ids.sep, ids.pad, ids.mask]) == list(range(443, 448))
    encoded = tokenizer.encode("the model")
    assert encoded.ids[0] == ids.cls and encoded.ids[-1] == ids.sep
    assert tokenizer.decode(encoded.ids) == "the model"

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tmp_path / "a"))
    assert (hf.cls_token_id, hf.sep_token_id, hf.pad_token_id, hf.mask_token_id) == (
        ids.cls, ids.sep, ids.pad, ids.mask)
    assert hf("the model")["input_ids"] == encoded.ids
    # [MASK] swallows the space before it, like ModernBERT's, so "is [MASK]." prompts work.
    assert hf("the [MASK].")["input_ids"] == hf("the[MASK].")["input_ids"]


def test_tokenizer_cli_reports_bad_input(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, b"{oops"])
    rc = tool("train_tokenizer").main(["--input", path, "--output-dir", str(tmp_path / "t")])
    assert rc == 2
    assert f"{path}:2: malformed JSON" in capsys.readouterr().err


def test_preprocess_cli_end_to_end_then_merge_and_inspect(tmp_path, tokenizer_dir, capsys):
    texts = [{"text": t} for t in training_texts(30)]
    a = write_jsonl(tmp_path / "a.jsonl", texts[:10])
    b = write_jsonl(tmp_path / "b.jsonl", texts[10:])
    for path, name in ((a, "a"), (b, "b")):
        rc = tool("preprocess_data").main([
            "--input", path, "--output-prefix", str(tmp_path / name), "--json-keys", "text",
            "--tokenizer-model", tokenizer_dir, "--tokenizer-type", "HuggingFaceTokenizer",
            "--workers", "2", "--log-interval", "5"])
        assert rc == 0
    err = capsys.readouterr().err
    assert "docs/s" in err and "tokens/s" in err and "MB/s" in err  # progress line
    assert "done: 20 records -> 20 documents" in err  # summary

    rc = tool("merge_datasets").main([
        "--input", str(tmp_path / "a_text_document"), str(tmp_path / "b_text_document"),
        "--output-prefix", str(tmp_path / "merged" / "ab")])
    assert rc == 0 and len(IndexedDataset(str(tmp_path / "merged" / "ab"))) == 30

    rc = tool("inspect_dataset").main([str(tmp_path / "merged" / "ab"), "--tokenizer-model",
                                       tokenizer_dir, "--samples", "2", "--seed", "0"])
    report = capsys.readouterr().out
    assert rc == 0 and "documents 30" in report and "histogram" in report
    assert report.count("--- document") == 2 and "[CLS]" in report


def test_cli_error_is_one_line_exit_2(tmp_path, tokenizer_dir):
    """Run as users do, in a subprocess: no traceback, exit status 2."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "ok"}, {"text": ["not", "a", "string"]}])
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", path,
         "--output-prefix", str(tmp_path / "o"), "--tokenizer-model", tokenizer_dir],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert f"error: {path}:2: key 'text' is list, expected a string" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not [n for n in os.listdir(tmp_path) if n.startswith("o")]


@pytest.mark.parametrize("name, argv, message", [
    ("fill_mask", ["hf", "The [MASK].", "--top-k", "0"], "--top-k: must be a positive integer, got 0"),
    ("convert_checkpoint", ["hf-to-megatron", "--hf-dir", "hf", "--save", "ckpt", "--target-tensor-parallel-size",
                            "0"], "--target-tensor-parallel-size: must be a positive integer, got 0"),
    ("convert_checkpoint", ["megatron-to-hf", "--load", "ckpt", "--output", "hf", "--tolerance", "-1"],
     "--tolerance: must be a number >= 0, got -1"),
    ("preprocess_data", ["--input", "in.jsonl", "--output-prefix", "o", "--tokenizer-model", "tok", "--workers", "0"],
     "--workers: must be a positive integer, got 0"),
    ("inspect_dataset", ["data", "--max-chars", "0"], "--max-chars: must be a positive integer, got 0"),
    ("train_tokenizer", ["--input", "in.jsonl", "--output-dir", "tok", "--vocab-size", "-64"],
     "--vocab-size: must be a positive integer, got -64"),
    ("merge_datasets", ["--output-prefix", "m"], "the following arguments are required: --input"),
    ("build_sample_corpus", [], "the following arguments are required: --output"),
])
def test_every_tool_refuses_bad_arguments_in_one_line(capsys, tmp_path, monkeypatch, name, argv, message):
    """argparse's refusals too: one line and exit 2, not the usage, and nothing written."""
    monkeypatch.chdir(tmp_path)
    assert tool(name).main(argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not os.listdir(tmp_path)


def test_generate_refuses_a_negative_length_in_one_line(tmp_path):
    """Issue 27: --max-new-tokens -1 was passed on to transformers' generate. Run as users do (tools/, this
    checkout's package)."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "generate.py"), str(tmp_path / "hf"),
                           "The Python", "--max-new-tokens", "-1"], env={**os.environ, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (2, "error: --max-new-tokens: must be a positive integer, got -1\n")


def test_merge_rejects_missing_and_mismatched_inputs(tmp_path, tokenizer_dir, capsys):
    """Each in one line: a missing dataset named as the files it looked for, datasets of two tokenizers
    by the tokenizers' sizes and fingerprints; nothing is written."""
    nope = str(tmp_path / "nope")
    rc = tool("merge_datasets").main(["--input", nope + ".bin", "--output-prefix", str(tmp_path / "m")])
    assert rc == 2 and capsys.readouterr().err.strip() == (
        f"error: {nope}.bin: no dataset there (expected {nope}.bin and {nope}.idx); pass the prefix "
        "tools/preprocess_data.py wrote")
    other = other_tokenizer(tokenizer_dir, tmp_path)
    a, b = (preprocess(PreprocessConfig(input=write_jsonl(tmp_path / f"{name}.jsonl", [{"text": "a text"}]),
                                        output_prefix=str(tmp_path / name), tokenizer_model=tok,
                                        log_interval=0)).outputs["text"]
            for name, tok in (("a", tokenizer_dir), ("b", other)))
    rc = tool("merge_datasets").main(["--input", a, b, "--output-prefix", str(tmp_path / "m")])
    size = load_tokenizer(tokenizer_dir).get_vocab_size(with_added_tokens=True)
    assert rc == 2 and capsys.readouterr().err.strip() == (
        f"error: {b} was made with another tokenizer than {a} ({size} tokens, sha256 "
        f"{tokenizer_fingerprint(other)[:12]} vs {size} tokens, sha256 {tokenizer_fingerprint(tokenizer_dir)[:12]}); "
        "merge only datasets preprocessed alike")
    assert not [name for name in os.listdir(tmp_path) if name.startswith("m")]


def test_a_bin_or_idx_name_stands_for_its_dataset(tmp_path, tokenizer_dir, capsys):
    """Users paste a dataset's file name where a prefix is expected: the tools take it as that prefix."""
    prefix = preprocess(PreprocessConfig(input=write_jsonl(tmp_path / "in.jsonl", [{"text": "a text"}]),
                                         output_prefix=str(tmp_path / "ds"), tokenizer_model=tokenizer_dir,
                                         log_interval=0)).outputs["text"]
    merged = str(tmp_path / "merged")
    assert tool("merge_datasets").main(["--input", prefix + ".bin", prefix + ".idx", "--output-prefix",
                                        merged + ".bin"]) == 0
    assert capsys.readouterr().err.strip().endswith(f"-> {merged}.bin/.idx")
    assert sorted(os.listdir(tmp_path)) == ["ds_text_document.bin", "ds_text_document.idx",
                                            "ds_text_document.meta.json", "in.jsonl", "merged.bin", "merged.idx",
                                            "merged.meta.json"]
    assert tool("inspect_dataset").main([merged + ".idx", "--samples", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [f"dataset   {merged}", "dtype     uint16", "documents 2"]


@pytest.mark.skipif(not os.path.isdir(MODERNBERT_DIR), reason="ModernBERT tokenizer not present")
def test_real_modernbert_tokenizer(tmp_path):
    from ettin_megatron.data.datasets import EttinDatasetConfig
    from ettin_megatron.data.objectives import ordinary_token_ids

    ids = special_ids(load_tokenizer(MODERNBERT_DIR))
    assert ids == MODERNBERT_IDS  # the defaults used wherever no tokenizer is given
    defaults = {f.name: f.default for f in dataclasses.fields(EttinDatasetConfig)}
    ordinary = ordinary_token_ids(*ordinary_ids(load_tokenizer(MODERNBERT_DIR)))
    assert len(ordinary) == 50_278  # no [unusedN] placeholder; the same ids as the defaults
    assert (ordinary == ordinary_token_ids(defaults["num_ordinary_tokens"],
                                           defaults["extra_special_token_ids"])).all()
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "The capital of France is Paris."}])
    summary = preprocess(PreprocessConfig(input=path, output_prefix=str(tmp_path / "o"),
                                          tokenizer_model=MODERNBERT_DIR, log_interval=0))
    dataset = IndexedDataset(summary.outputs["text"])  # keep it alive: items view its mmap
    tokens = dataset[0]
    assert tokens.dtype == "uint16" and tokens[0] == ids.cls and tokens[-1] == ids.sep


def test_load_tokenizer_accepts_dir_or_file_and_explains_failures(tmp_path, tokenizer_dir):
    from ettin_megatron.errors import TokenizerNotFound

    by_dir = load_tokenizer(tokenizer_dir)
    by_file = load_tokenizer(os.path.join(tokenizer_dir, "tokenizer.json"))
    assert by_dir.to_str() == by_file.to_str()
    (tmp_path / "broken.json").write_text("{not json")
    for bad, match in ((str(tmp_path), "has no tokenizer.json"),
                       (str(tmp_path / "broken.json"), "not a tokenizers JSON file"),
                       (str(tmp_path / "missing.json"), "no such tokenizer")):
        with pytest.raises(TokenizerNotFound, match=match):
            load_tokenizer(bad)
