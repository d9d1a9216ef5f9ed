"""A small IndexedDataset for training tests: [CLS] body [SEP] documents over a 1024-token vocabulary
whose specials sit at the top (as EttinDatasetConfig allows), written with megatron's builder, and the
tokenizer.json of that vocabulary (so that a run can take its ids the way users give them)."""

import os

import numpy
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

CLS, SEP, PAD, MASK = 1001, 1002, 1003, 1004
VOCAB = 1024
SPECIAL = dict(cls_token_id=CLS, sep_token_id=SEP, pad_token_id=PAD, mask_token_id=MASK,
               num_ordinary_tokens=1000, extra_special_token_ids=())


def write_tokenizer(directory) -> str:
    """A word-level tokenizer.json over "t0".."t999" whose special tokens get SPECIAL's ids (1000-1004, padded
    vocabulary VOCAB) and whose template frames a text [CLS] ... [SEP]: ``--tokenizer-model`` of it gives a
    run the ids SPECIAL lists. Written once per directory, atomically (ranks may ask at once); returns its
    path."""
    from tokenizers import AddedToken, Tokenizer, models, processors

    from ettin_megatron.files import atomic_write
    from ettin_megatron.vocab import SPECIAL_TOKENS

    path = os.path.join(str(directory), "tokenizer.json")
    if os.path.exists(path):
        return path
    vocab = {f"t{i}": i for i in range(SPECIAL["num_ordinary_tokens"])}
    vocab["[UNK]"] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)])
    with atomic_write(path) as file:
        file.write(tokenizer.to_str())
    return path


def corpus_bodies(num_docs=400, min_len=8, max_len=48, seed=0):
    """Document bodies (without [CLS]/[SEP]) that repeat a short random motif (learnable: the loss
    falls fast); each document is 2 tokens longer once framed."""
    rng = numpy.random.default_rng(seed)
    for _ in range(num_docs):
        motif = rng.integers(0, 50, rng.integers(2, 5))
        yield numpy.resize(motif, rng.integers(min_len, max_len + 1) - 2)


def write_corpus(directory, num_docs=400, min_len=8, max_len=48, seed=0) -> str:
    """An indexed dataset of `corpus_bodies` framed [CLS] body [SEP]; returns its prefix."""
    prefix = os.path.join(str(directory), "docs")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    for body in corpus_bodies(num_docs, min_len, max_len, seed):
        doc = numpy.concatenate([[CLS], body, [SEP]]).astype(numpy.int64)
        builder.add_document(doc, [len(doc)])
    builder.finalize(prefix + ".idx")
    return prefix


def base_args(prefix, **overrides) -> dict:
    """Flat arguments of a tiny, fast, deterministic run (no dropout) on ``prefix``, whose ids the
    tokenizer.json written beside it gives (write_tokenizer)."""
    values = dict(model_size="tiny", tokenizer_model=prefix and write_tokenizer(os.path.dirname(prefix)), data_path=[prefix],
                  split="90,10,0", seq_length=32,
                  micro_batch_size=2, global_batch_size=8, train_iters=5, lr=3e-3, lr_warmup_iters=2,
                  attention_output_dropout=0.0, attention_backend="sdpa", spec="local", log_interval=1,
                  eval_iters=0, seed=21)
    values.update(overrides)
    return values


def pretrain_error(capsys, argv) -> str:
    """Run ``pretrain`` on argv, expecting a refusal before any process group: its one error line."""
    from ettin_megatron.pretrain import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert not torch.distributed.is_initialized()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.splitlines()[-1] == lines[0], err  # one line, nothing after it
    return lines[0]
