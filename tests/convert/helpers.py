"""Helpers of the conversion tests: a tiny tokenizer, tiny random HF ModernBERT directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ettin_megatron.prep.train_tokenizer import train_tokenizer
from tests.hf_models import VOCAB, random_hf_model, tiny_config

WORDS = ("the quick brown fox jumps over lazy dog python library provides functions for working with "
         "text numbers files and networks a model learns to predict masked words from their context "
         "encoders read both directions while decoders read left to right").split()


def train_tiny_tokenizer(directory: Path) -> Path:
    """A byte-level BPE tokenizer with [UNK] [CLS] [SEP] [PAD] [MASK] (AutoTokenizer loads it offline)."""
    generator = torch.Generator().manual_seed(0)
    corpus = directory / "corpus.jsonl"
    with open(corpus, "w") as f:
        for _ in range(400):
            picks = torch.randint(len(WORDS), (12,), generator=generator).tolist()
            f.write(json.dumps({"text": " ".join(WORDS[i] for i in picks).capitalize() + "."}) + "\n")
    out = directory / "tok"
    train_tokenizer([str(corpus)], str(out), vocab_size=VOCAB)
    return out


def token_ids(tokenizer_dir) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    return {f"{n.lower()}_token_id": tok.token_to_id(f"[{n}]") for n in ("CLS", "SEP", "PAD", "MASK")}


def make_hf_dir(directory: Path, attention: str, tokenizer_dir, seed: int = 0) -> Path:
    """A saved random HF ModernBERT (encoder or decoder) with the tiny tokenizer's special ids."""
    model = random_hf_model(tiny_config(attention), token_ids(tokenizer_dir), seed)
    model.save_pretrained(str(directory))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(Path(tokenizer_dir) / name, directory / name)
    return directory


def eval_batch(tokenizer_dir):
    """The verify sample texts, tokenized and right-padded (rows longer than the 16-token window)."""
    from ettin_megatron.convert.verify import sample_batch

    return sample_batch(tokenizer_dir)


def safetensors_dict(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}
