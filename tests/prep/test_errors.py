"""Bad input stops the run with `file:line: what is wrong`, or is skipped and counted; failed runs
leave no complete-looking .bin/.idx pair."""

import gzip
import importlib
import json
import os
import re

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from ettin_megatron.errors import InputError
from ettin_megatron.prep import preprocess as preprocess_module
from ettin_megatron.prep.preprocess import PreprocessConfig, preprocess
from tests.texts import write_jsonl

GOOD = [{"text": f"good document {i}"} for i in range(6)]

BAD_LINES = {
    "malformed JSON": b'{"text": "unterminated',
    "missing key 'text'": b'{"body": "no text key here"}',
    "key 'text' is int, expected a string": b'{"text": 42}',
    "key 'text' is NoneType": b'{"text": null}',
    "invalid UTF-8": b'{"text": "caf\xe9 latin-1"}',
    "unpaired surrogate": b'{"text": "lone \\ud800 surrogate"}',
    "expected a JSON object, got list": b'["text", "in a list"]',
}


def config(tmp_path, tokenizer_dir, input_path, **options):
    return PreprocessConfig(input=input_path, output_prefix=str(tmp_path / "out" / "ds"),
                            tokenizer_model=tokenizer_dir, log_interval=0, **options)


def assert_no_output(tmp_path):
    out = tmp_path / "out"
    assert not out.exists() or os.listdir(out) == [], os.listdir(out)


@pytest.mark.parametrize("problem", sorted(BAD_LINES))
def test_bad_record_stops_with_file_and_line(tmp_path, tokenizer_dir, problem):
    # Line 4 is bad; chunk_size 2 puts it in the second chunk, after a chunk was already written.
    path = write_jsonl(tmp_path / "in.jsonl", GOOD[:3] + [BAD_LINES[problem]] + GOOD[3:])
    with pytest.raises(InputError) as excinfo:
        preprocess(config(tmp_path, tokenizer_dir, path, chunk_size=2, workers=2))
    message = str(excinfo.value)
    assert message.startswith(f"{path}:4: "), message
    assert problem in message and "--skip-invalid" in message and "\n" not in message
    assert_no_output(tmp_path)


@pytest.mark.parametrize("problem", sorted(BAD_LINES))
def test_skip_invalid_skips_and_counts(tmp_path, tokenizer_dir, tokenizer, problem):
    records = GOOD[:3] + [BAD_LINES[problem], BAD_LINES[problem]] + GOOD[3:]
    path = write_jsonl(tmp_path / "in.jsonl", records)
    summary = preprocess(config(tmp_path, tokenizer_dir, path, chunk_size=2, skip_invalid=True))
    assert (summary.invalid, summary.records, summary.documents) == (2, len(GOOD), len(GOOD))
    dataset = IndexedDataset(summary.outputs["text"])
    assert [dataset[i].tolist() for i in range(len(dataset))] == [
        tokenizer.encode(r["text"]).ids for r in GOOD
    ]


def test_first_bad_line_in_input_order_is_reported(tmp_path, tokenizer_dir):
    records = GOOD[:1] + [BAD_LINES["malformed JSON"]] + GOOD + [b'{"text": 1}']
    path = write_jsonl(tmp_path / "in.jsonl", records)
    with pytest.raises(InputError, match=r":2: malformed JSON"):
        preprocess(config(tmp_path, tokenizer_dir, path, chunk_size=1, workers=3))


def test_blank_lines_are_ignored(tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD[0], b"", b"   ", GOOD[1]])
    summary = preprocess(config(tmp_path, tokenizer_dir, path))
    assert (summary.records, summary.documents, summary.invalid) == (2, 2, 0)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"input": "/nonexistent/*.jsonl"}, "no file matches"),
        ({"tokenizer_model": "/nonexistent/tokenizer"}, "--tokenizer-model"),
        ({"append_eod": True}, "--no-wrap"),
        ({"json_keys": ()}, "--json-keys"),
        ({"workers": 0}, "--workers"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, tokenizer_dir, options, match):
    path = write_jsonl(tmp_path / "in.jsonl", GOOD)
    cfg = config(tmp_path, tokenizer_dir, path)
    for key, value in options.items():
        setattr(cfg, key, value)
    with pytest.raises(InputError, match=match):
        preprocess(cfg)
    assert_no_output(tmp_path)


def test_parquet_without_the_column_fails_before_any_work(tmp_path, tokenizer_dir):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "in.parquet")
    with pytest.raises(InputError, match=r"in.parquet: no column 'text' \(columns: body\)"):
        preprocess(config(tmp_path, tokenizer_dir, str(tmp_path / "in.parquet")))
    assert_no_output(tmp_path)


_real_encode_chunk = preprocess_module.encode_chunk


def _dies_on_second_chunk(chunk):
    """Stands in for a worker killed mid-run (OOM killer, SIGKILL): the process vanishes."""
    if chunk.first_line > 1:
        os._exit(9)
    return _real_encode_chunk(chunk)


def _fails_on_second_chunk(chunk):
    if chunk.first_line > 1:
        raise MemoryError("simulated failure inside a worker")
    return _real_encode_chunk(chunk)


def test_killed_worker_leaves_no_output(tmp_path, tokenizer_dir, monkeypatch):
    path = write_jsonl(tmp_path / "in.jsonl", GOOD * 5)
    monkeypatch.setattr(preprocess_module, "encode_chunk", _dies_on_second_chunk)
    with pytest.raises(InputError, match="worker process died"):
        preprocess(config(tmp_path, tokenizer_dir, path, chunk_size=4, workers=2))
    assert_no_output(tmp_path)


def test_failing_worker_leaves_no_output_and_keeps_an_older_dataset(tmp_path, tokenizer_dir, monkeypatch):
    path = write_jsonl(tmp_path / "in.jsonl", GOOD * 5)
    old = preprocess(config(tmp_path, tokenizer_dir, path)).outputs["text"]
    before = [open(old + ext, "rb").read() for ext in (".bin", ".idx")]
    monkeypatch.setattr(preprocess_module, "encode_chunk", _fails_on_second_chunk)
    with pytest.raises(MemoryError):
        preprocess(config(tmp_path, tokenizer_dir, path, chunk_size=4, workers=2))
    assert sorted(os.listdir(tmp_path / "out")) == ["ds_text_document.bin", "ds_text_document.idx",
                                                    "ds_text_document.meta.json"]
    assert [open(old + ext, "rb").read() for ext in (".bin", ".idx")] == before


def test_user_errors_share_one_base():
    """The command lines catch EttinError alone; every user-error type must be one (and a ValueError)."""
    from ettin_megatron.errors import ConfigError, EttinError, TokenizerNotFound

    for error in (ConfigError, InputError, TokenizerNotFound):
        assert issubclass(error, EttinError) and issubclass(error, ValueError), error


# ---------------------------------------------------------------- file-level errors, through the tools

def tool_error(capsys, name: str, *argv: str) -> str:
    """Run tools/<name>.py's main as a user would (in this process), expecting exit status 2 and one line
    on stderr, which is returned."""
    assert importlib.import_module(f"tools.{name}").main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def corrupt_parquet(tmp_path) -> str:
    """A .parquet file without Parquet's footer (as a download cut short leaves one)."""
    pytest.importorskip("pyarrow")
    (tmp_path / "in.parquet").write_bytes(b"PAR1 and then nothing Parquet-like")
    return str(tmp_path / "in.parquet")


def plain_text_named_gz(tmp_path) -> str:
    return write_jsonl(tmp_path / "in.jsonl.gz", GOOD)


def missing_file(tmp_path) -> str:
    return str(tmp_path / "typo.jsonl")


def malformed_json(tmp_path) -> str:
    return write_jsonl(tmp_path / "in.jsonl", [b'{"text": "unterminated'])


BAD_FILES = {
    corrupt_parquet: "{}: cannot be read as Parquet (ArrowInvalid: Parquet magic bytes not found in footer. Either "
                     "the file is corrupted or this is not a parquet file.) (fix the input or pass --skip-invalid)",
    plain_text_named_gz: "{}: cannot be read as gzip-compressed JSONL (BadGzipFile: Not a gzipped file (b'{{\"')) "
                         "(fix the input or pass --skip-invalid)",
    missing_file: "{} does not exist (expected a file, a glob or a directory of .jsonl, .jsonl.gz, .jsonl.zst, "
                  ".json, .json.gz, .json.zst, .parquet files)",
    malformed_json: "{}:1: malformed JSON (Unterminated string starting at: column 10) (fix the input or pass "
                    "--skip-invalid)",
}


@pytest.mark.parametrize("make_input", BAD_FILES, ids=lambda make: make.__name__)
def test_a_bad_input_file_is_one_line_and_keeps_the_older_output(tmp_path, tokenizer_dir, capsys, make_input):
    """Each refusal names the file and what to do, and leaves the dataset an earlier run wrote as it was."""
    path = make_input(tmp_path)
    (tmp_path / "out").mkdir()
    older = {tmp_path / "out" / f"ds_text_document{suffix}": suffix.encode()
             for suffix in (".bin", ".idx", ".meta.json")}
    for file, content in older.items():
        file.write_bytes(content)
    err = tool_error(capsys, "preprocess_data", "--input", path, "--output-prefix", str(tmp_path / "out" / "ds"),
                     "--tokenizer-model", tokenizer_dir, "--workers", "1")
    assert err == "error: " + BAD_FILES[make_input].format(path)
    assert {file: file.read_bytes() for file in (tmp_path / "out").iterdir()} == older


def test_skip_invalid_skips_and_counts_a_corrupt_parquet_file(tmp_path, tokenizer_dir, tokenizer, capsys):
    """As it skips a bad record: the other files' documents are written, the file is counted invalid."""
    from tools.preprocess_data import main

    corrupt_parquet(tmp_path)
    write_jsonl(tmp_path / "good.jsonl", GOOD)
    assert main(["--input", str(tmp_path), "--output-prefix", str(tmp_path / "out" / "ds"), "--tokenizer-model",
                 tokenizer_dir, "--workers", "1", "--skip-invalid"]) == 0
    done = capsys.readouterr().err.strip().splitlines()[-1]
    assert done.startswith(f"done: {len(GOOD)} records") and "skipped 0 empty and 1 invalid" in done, done
    dataset = IndexedDataset(str(tmp_path / "out" / "ds_text_document"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == [tokenizer.encode(r["text"]).ids for r in GOOD]


def test_a_file_cut_short_stops_where_it_breaks_or_is_skipped_from_there(tmp_path, tokenizer_dir):
    """A .gz whose first block reads is found bad only as it is read: the run stops naming the first line
    it did not give, or with --skip-invalid keeps the lines before and counts the file invalid."""
    data = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in GOOD * 1000))
    (tmp_path / "in.jsonl.gz").write_bytes(data[: len(data) // 2])
    path = str(tmp_path / "in.jsonl.gz")
    with pytest.raises(InputError, match=re.escape(f"{path}:") + r"\d+: cannot be read as gzip-compressed JSONL "
                       r"from here on \(EOFError: Compressed file ended"):
        preprocess(config(tmp_path, tokenizer_dir, path, chunk_size=2))
    assert_no_output(tmp_path)
    summary = preprocess(config(tmp_path, tokenizer_dir, path, chunk_size=2, skip_invalid=True))
    assert summary.invalid == 1 and 0 < summary.documents == summary.records < len(GOOD) * 1000


@pytest.mark.parametrize("name, flag", [("preprocess_data", "--output-prefix"), ("merge_datasets", "--output-prefix"),
                                        ("train_tokenizer", "--output-dir")])
def test_an_unwritable_output_location_is_one_line(tmp_path, tokenizer_dir, capsys, unwritable, name, flag):
    """Named by the flag and the directory that refused, instead of a traceback once the output is written."""
    location, refused = unwritable
    source = write_jsonl(tmp_path / "in.jsonl", GOOD)
    dataset = str(tmp_path / "ds")
    builder = IndexedDatasetBuilder(dataset + ".bin", dtype=np.uint16)
    builder.add_document(np.arange(3), [3])
    builder.finalize(dataset + ".idx")
    inputs = {"preprocess_data": ["--input", source, "--tokenizer-model", tokenizer_dir, "--workers", "1"],
              "merge_datasets": ["--input", dataset], "train_tokenizer": ["--input", source]}[name]
    err = tool_error(capsys, name, *inputs, flag, os.path.join(location, "out"))
    assert err.startswith(f"error: {flag}: cannot write in {refused} ("), err
    assert err.endswith("); choose a writable location"), err
