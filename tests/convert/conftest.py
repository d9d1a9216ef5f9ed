"""Fixtures of the conversion tests: a tiny tokenizer, tiny random HF models, and (once per session)
checkpoints trained / re-saved at TP=2 and PP=2 on two gloo ranks."""

from __future__ import annotations

import pytest

from ettin_megatron.runtime import initialize

from .helpers import make_hf_dir, train_tiny_tokenizer


@pytest.fixture(scope="session", autouse=True)
def single_rank_world():
    """Conversions run in a gloo world of one (multi-rank parts spawn their own ranks)."""
    from transformers.utils import logging as hf_logging

    hf_logging.get_verbosity()  # bind transformers' log handler now, not to a test's captured stream
    initialize()
    yield


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory, tokenizer_dir):
    """{attention: directory} of tiny random HF ModernBERT models with the tokenizer files."""
    root = tmp_path_factory.mktemp("hf")
    return {o: make_hf_dir(root / o, o, tokenizer_dir, seed=i) for i, o in enumerate(("bidirectional", "causal"))}


@pytest.fixture(scope="session")
def parallel_run(tmp_path_factory, tokenizer_dir, hf_dirs):
    """One 2-rank spawn: at TP=2 and at PP=2, for encoder and decoder, (a) load the HF-imported
    checkpoint and save it again from that layout, (b) train a fresh model 3 steps, save it, and
    compute its logits on the sample batch. Returns paths and the parallel logits."""
    from ettin_megatron.convert.import_hf import hf_to_megatron
    from tests.ranks import run_ranks

    from .helpers import eval_batch
    from .parallel_worker import LAYOUTS, worker

    root = tmp_path_factory.mktemp("parallel")
    imported = {o: str(root / "imported" / o) for o in hf_dirs}
    for attention, directory in hf_dirs.items():
        hf_to_megatron(directory, imported[attention])
    ids, mask = eval_batch(tokenizer_dir)
    per_rank = run_ranks(2, worker, str(root), imported, str(tokenizer_dir), ids, mask, timeout=600)
    logits, losses = {}, {}
    for result in per_rank:
        logits.update(result["logits"])
        losses.update(result["losses"])
    return {"root": root, "imported": imported, "logits": logits, "losses": losses, "layouts": LAYOUTS,
            "batch": (ids, mask)}
