"""A corpus whose meaning a tiny model can learn in seconds, and runs trained on it through the real entry
points (``python -m ettin_megatron.pretrain``, then ``tools/convert_checkpoint.py megatron-to-hf``).

Each document draws its words from one of TOPICS disjoint word sets ("t0".."t23" is topic 0, and so on).
A model that has learned the corpus knows which words go together; an untrained one does not. Texts are
the words, space-separated, so that a user-facing tokenizer (whitespace-split word level, the ids of
tests/training/training_data.py) turns them into exactly the ids the model was trained on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy

from ettin_megatron.runtime.distributed import free_port
from tests.training.cli import REPO, flags
from tests.training.training_data import CLS, SEP, base_args, write_tokenizer

TOPICS, WORDS_PER_TOPIC = 8, 24


def topic_words(topic: int, part: slice = slice(None)) -> numpy.ndarray:
    """The ids of one topic's words (``part``: a slice of them)."""
    return (numpy.arange(WORDS_PER_TOPIC) + topic * WORDS_PER_TOPIC)[part]


def text(ids) -> str:
    return " ".join(f"t{i}" for i in ids)


def topic_text(rng: numpy.random.Generator, topic: int, length: int, part: slice = slice(None)) -> str:
    """``length`` words drawn at random from ``part`` of one topic's words."""
    return text(rng.choice(topic_words(topic, part), length))


def write_topic_corpus(directory: Path, num_docs: int = 800, length: int = 40, seed: int = 0) -> str:
    """An indexed dataset of [CLS] words [SEP] documents, topics in turn, and beside it the tokenizer.json
    that reads its texts (word level, split at whitespace); returns the dataset's prefix."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer, pre_tokenizers

    rng = numpy.random.default_rng(seed)
    prefix = str(directory / "docs")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    for index in range(num_docs):
        document = numpy.concatenate([[CLS], rng.choice(topic_words(index % TOPICS), length), [SEP]])
        builder.add_document(document.astype(numpy.int64), [len(document)])
    builder.finalize(prefix + ".idx")
    tokenizer_path = write_tokenizer(directory)
    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(tokenizer_path)
    return prefix


def train_and_export(prefix: str, out: Path, objective: str, steps: int, **overrides) -> Path:
    """Train a tiny model on the corpus at ``prefix`` for ``steps`` steps, then export its last checkpoint,
    with the commands users run (pretrain, one process; convert_checkpoint.py megatron-to-hf); returns
    the HF directory."""
    save = out / "checkpoints"
    args = base_args(prefix, objective=objective, seq_length=64, micro_batch_size=16, global_batch_size=16,
                     train_iters=steps, lr_warmup_iters=min(10, steps), split="100,0,0", save=str(save),
                     log_interval=steps, num_workers=0, **overrides)
    hf = out / "hf"
    command(["-m", "ettin_megatron.pretrain", *flags(**args)])
    command([str(REPO / "tools" / "convert_checkpoint.py"), "megatron-to-hf", "--load", str(save), "--output", str(hf)])
    return hf


def command(argv: list[str]) -> None:
    """``python ARGV``, which must succeed: this repository's package, one thread, and a rendezvous port of
    its own (a MASTER_PORT that an earlier in-process world left in os.environ may still be held)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
