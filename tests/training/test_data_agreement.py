"""Data, tokenizer and model agree before any compute: a prefix made with another tokenizer, a prefix
whose ids the vocabulary lacks and special ids beyond --vocab-size are refused in one line (before:
an IndexError in the first forward, or at TP=2 a silent run on zero vectors); prefixes without a
record (Megatron-LM's tool) and with one still train."""

import math
import os

import numpy
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from ettin_megatron.data.tokenizer import load_tokenizer, special_ids
from ettin_megatron.prep.preprocess import PreprocessConfig, preprocess
from tests.ranks import run_ranks
from tests.texts import other_tokenizer, training_texts, write_jsonl
from tests.training.training_data import base_args, pretrain_error


def preprocessed(tmp_path, tokenizer_dir) -> str:
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in training_texts(120)])
    config = PreprocessConfig(input=path, output_prefix=str(tmp_path / "ds"), tokenizer_model=tokenizer_dir,
                              log_interval=0)
    return preprocess(config).outputs["text"]


def megatron_style(tmp_path, top_id: int) -> str:
    """A prefix as Megatron-LM's tool writes it (no record) whose largest id is ``top_id``."""
    prefix = str(tmp_path / "megatron")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
    doc = numpy.arange(20) * top_id // 19  # 0 ... top_id
    for _ in range(20):
        builder.add_document(doc, [len(doc)])
    builder.finalize(prefix + ".idx")
    return prefix


def argv(prefix, *extra):
    return ["--data-path", prefix, "--train-iters", "2", "--seq-length", "32", *extra]


def test_data_made_with_another_tokenizer_is_refused(capsys, tmp_path, tokenizer_dir):
    prefix = preprocessed(tmp_path, tokenizer_dir)
    other = other_tokenizer(tokenizer_dir, tmp_path)  # same size: only the fingerprint tells them apart
    line = pretrain_error(capsys, argv(prefix, "--tokenizer-model", other))
    assert line.startswith(f"error: {prefix} was made with another tokenizer (484 tokens, sha256 ")
    assert f"than --tokenizer-model {other} (484 tokens, sha256 " in line
    # Without --tokenizer-model the run assumes ModernBERT's tokenizer.
    line = pretrain_error(capsys, argv(prefix))
    assert "than ModernBERT's tokenizer (used without --tokenizer-model) (50368 tokens)" in line


def test_token_ids_beyond_the_vocabulary_are_refused(capsys, tmp_path, tokenizer_dir):
    padded = special_ids(load_tokenizer(tokenizer_dir)).padded_vocab_size
    bad = megatron_style(tmp_path, top_id=600)
    line = pretrain_error(capsys, argv(bad, "--tokenizer-model", tokenizer_dir))
    assert line.startswith(f"error: {bad} holds token id 600 but the model's vocabulary has {padded} ids: the "
                           f"data was made with another tokenizer than --tokenizer-model {tokenizer_dir};")
    # Every prefix of a mixture is checked.
    good = preprocessed(tmp_path, tokenizer_dir)
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"name: two\ndatasets:\n  - prefix: {good}\n    weight: 1\n  - prefix: {bad}\n    weight: 1\n")
    line = pretrain_error(capsys, ["--data-mix", str(mix), "--train-iters", "2", "--tokenizer-model", tokenizer_dir])
    assert line.startswith(f"error: {bad} holds token id 600")


def test_special_ids_beyond_vocab_size_are_refused(capsys, tmp_path, tokenizer_dir):
    prefix = megatron_style(tmp_path, top_id=500)
    line = pretrain_error(capsys, argv(prefix, "--vocab-size", "1024"))
    assert line == ("error: --vocab-size 1024 does not hold the special token ids: [MASK] is 50284 in ModernBERT's "
                    "tokenizer (used without --tokenizer-model); pass --tokenizer-model (the tokenizer the data "
                    "was made with) or a --vocab-size above 50284.")
    line = pretrain_error(capsys, argv(prefix, "--vocab-size", "256", "--tokenizer-model", tokenizer_dir))
    assert line.startswith(f"error: --vocab-size 256 is smaller than --tokenizer-model {tokenizer_dir}'s 484 tokens")


def _train(rank, data_path, tokenizer):
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    args = make_arguments(**base_args(None, data_path=data_path, tokenizer_model=tokenizer, vocab_size=None,
                                      train_iters=2))
    return [row["loss"] for row in pretrain(args) if "loss" in row]


def test_prefixes_with_and_without_a_record_train(tmp_path, tokenizer_dir):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    recorded, unrecorded = preprocessed(tmp_path / "a", tokenizer_dir), preprocessed(tmp_path / "b", tokenizer_dir)
    os.remove(unrecorded + ".meta.json")  # as Megatron-LM's tool writes it
    losses = run_ranks(1, _train, ["0.5", recorded, "0.5", unrecorded], tokenizer_dir)[0]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
