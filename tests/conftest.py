"""Fixtures every test may use: a small tokenizer trained once per session (tests/texts.py's texts), and
output locations nothing can be written in."""

import pytest

from ettin_megatron.prep.train_tokenizer import train_tokenizer
from tests.texts import training_texts, write_jsonl


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A 512-token byte-level BPE tokenizer with the ModernBERT special tokens."""
    root = tmp_path_factory.mktemp("tokenizer")
    corpus = write_jsonl(root / "train.jsonl", [{"text": t} for t in training_texts()])
    out = root / "tok"
    train_tokenizer([corpus], str(out), vocab_size=512)
    return str(out)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from ettin_megatron.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(params=["read-only directory", "below a file"])
def unwritable(request, tmp_path):
    """(an output location no file can be created in, the directory the refusal names). The tests run
    as root, whom a chmod-ed directory does not stop, so a read-only directory is /sys, where sysfs
    lets nobody create a file; the other kind is a path whose parent is a regular file."""
    if request.param == "read-only directory":
        return "/sys", "/sys"
    (tmp_path / "file").write_text("not a directory")
    return str(tmp_path / "file" / "out"), str(tmp_path / "file")
