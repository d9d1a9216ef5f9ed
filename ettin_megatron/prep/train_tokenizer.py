"""Train a small byte-level BPE tokenizer shaped like ModernBERT's, for the offline CPU demo and tests.

Same pipeline as ModernBERT's tokenizer (NFC, byte-level pre-tokenizer and decoder, no prefix space),
the same special token names with [MASK] stripping the space before it (so fill-mask prompts
"is [MASK]." work), the special tokens at the END of the vocabulary as in ModernBERT (ids below them
are ordinary tokens), and the `[CLS] $A [SEP]` template. The directory it writes loads with both
`tokenizers.Tokenizer.from_file(dir/tokenizer.json)` and `transformers.AutoTokenizer.from_pretrained`.
The texts are fed in file order and the BPE trainer breaks ties deterministically, so the same
inputs give the same bytes (a test checks it).
"""

import os
from typing import Iterator, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

from ettin_megatron.cli import check_writable
from ettin_megatron.errors import InputError
from ettin_megatron.files import write_json
from ettin_megatron.prep.readers import iter_chunks, parse_chunk
from ettin_megatron.vocab import SPECIAL_TOKENS, transformers_tokenizer_files

#: ModernBERT's model_max_length, written into tokenizer_config.json.
MODEL_MAX_LENGTH = 8192


def train_tokenizer(
    jsonl_paths: Sequence[str],
    out_dir: str,
    vocab_size: int = 4096,
    json_key: str = "text",
    min_frequency: int = 2,
) -> Tokenizer:
    """Train on the `json_key` texts of `jsonl_paths` and save tokenizer files into `out_dir`.

    `vocab_size` counts the five special tokens; use a multiple of 64 so the embedding needs no
    padding. A small corpus can yield fewer tokens than asked (BPE stops when no pair repeats
    `min_frequency` times); `special_ids(...).padded_vocab_size` covers that.
    """
    if vocab_size <= 256 + len(SPECIAL_TOKENS):
        raise InputError(f"--vocab-size {vocab_size} must exceed the 256 byte tokens + {len(SPECIAL_TOKENS)} specials.")
    check_writable(out_dir, "--output-dir")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(jsonl_paths, json_key), trainer=trainer)
    tokenizer.add_special_tokens(
        [AddedToken(t, lstrip=t == "[MASK]", normalized=False, special=True) for t in SPECIAL_TOKENS]
    )
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    save_tokenizer_dir(tokenizer, out_dir)
    return tokenizer


def save_tokenizer_dir(tokenizer: Tokenizer, out_dir: str) -> None:
    """Write tokenizer.json plus the two small files transformers' AutoTokenizer reads."""
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    for name, content in transformers_tokenizer_files(MODEL_MAX_LENGTH).items():
        write_json(os.path.join(out_dir, name), content)


def _texts(paths: Sequence[str], key: str) -> Iterator[str]:
    """The training texts, in file order; bad lines raise InputError like preprocessing does."""
    for chunk in iter_chunks(paths, [key], chunk_size=1000):
        docs, errors = parse_chunk(chunk, [key])
        if errors:
            raise InputError(errors[0][1])
        yield from (texts[key] for _, texts in docs)
