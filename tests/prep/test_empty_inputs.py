"""No documents is an error, never an "empty dataset": preprocess refuses an input without documents
(writing nothing), and the tools and pretrain refuse an empty .bin in one line instead of megatron's
``cannot mmap an empty file`` traceback."""

import os

import numpy
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from tests.texts import write_jsonl
from tests.training.training_data import pretrain_error


def test_preprocess_refuses_an_input_without_documents(tmp_path, tokenizer_dir, capsys):
    from tools.preprocess_data import main

    source = write_jsonl(tmp_path / "empty.jsonl", [{"text": ""}, {"text": "   "}])
    assert main(["--input", str(source), "--output-prefix", str(tmp_path / "out"), "--tokenizer-model",
                 tokenizer_dir, "--workers", "1"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {source}: no documents (no records, or only empty "
                                               "texts); nothing written")
    assert os.listdir(tmp_path) == ["empty.jsonl"]


def test_an_empty_bin_is_one_line_everywhere(tmp_path, capsys):
    from tools.inspect_dataset import main as inspect_main
    from tools.merge_datasets import main as merge_main

    prefix = str(tmp_path / "empty")
    IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32).finalize(prefix + ".idx")  # what preprocess wrote
    message = f"error: {prefix}.bin is empty (a dataset without documents); preprocess an input that has " \
              "documents, or leave it out"
    assert inspect_main([prefix]) == 2
    assert capsys.readouterr().err.strip() == message
    assert merge_main(["--input", prefix, "--output-prefix", str(tmp_path / "merged")]) == 2
    assert capsys.readouterr().err.strip() == message
    assert pretrain_error(capsys, ["--data-path", prefix, "--train-iters", "1"]) == message
