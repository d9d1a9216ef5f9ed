"""Texts and tokenizers the tests share: pseudo-sentences in many scripts, JSONL writing, a tokenizer
like another, and where the real ModernBERT tokenizer sits on the project's build machines."""

import json
import os
import shutil

#: Where the real ModernBERT tokenizer sits on the project's build machines (absent elsewhere).
MODERNBERT_DIR = os.path.join(
    os.path.dirname(__file__), os.pardir, os.pardir, "shared", "tokenizers", "modernbert"
)

WORDS = (
    "the model reads tokens from documents and learns to predict masked words in context while "
    "encoders attend in both directions and decoders only look back naïve café über straße "
    "東京 日本語 テキスト emoji 🙂 🚀 numbers 12345 3.14 code def f(x): return x * 2"
).split()


def training_texts(count: int = 400):
    """Deterministic pseudo-sentences covering ASCII, accents, CJK, emoji and code."""
    texts = []
    for i in range(count):
        words = [WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(5 + i % 17)]
        texts.append(" ".join(words).capitalize() + ". " + " ".join(reversed(words)) + "!")
    return texts


def write_jsonl(path, records):
    """Write dicts (or raw bytes lines) as a JSONL file; return its path as str."""
    with open(path, "wb") as f:
        for record in records:
            line = record if isinstance(record, bytes) else json.dumps(record).encode()
            f.write(line + b"\n")
    return str(path)


def other_tokenizer(tokenizer_dir, tmp_path) -> str:
    """A copy of the tokenizer at `tokenizer_dir` with another normalizer: the same size, other ids for
    some texts (only its fingerprint tells it apart)."""
    out = tmp_path / "other_tok"
    shutil.copytree(tokenizer_dir, out)
    content = json.loads((out / "tokenizer.json").read_text())
    content["normalizer"] = {"type": "Lowercase"}
    (out / "tokenizer.json").write_text(json.dumps(content))
    return str(out)
