"""Loading the tokenizer, its special ids and its fingerprint.

Everything downstream (preprocessing, datasets, objectives, HF export) asks this module for the
tokenizer and its special ids, so that there is exactly one place that decides how a path or hub name
turns into a `tokenizers.Tokenizer` and which ids [CLS]/[SEP]/[PAD]/[MASK] have. We use the Rust
`tokenizers` object directly (not a transformers wrapper) because it is picklable as JSON, fast in
batches and identical on every rank.
"""

import hashlib
import json
import os
from typing import Optional

from tokenizers import Tokenizer

from ettin_megatron.errors import TokenizerNotFound
from ettin_megatron.vocab import SPECIAL_TOKENS, SpecialIds


def load_tokenizer(path_or_name: str) -> Tokenizer:
    """Load a tokenizer from a directory holding tokenizer.json, a tokenizer.json file, or a hub name.

    Truncation and padding are switched off: preprocessing must store every token of every document,
    whatever a tokenizer.json was saved with. A hub name only works where the hub is reachable; we
    never download implicitly anywhere else.
    """
    path = tokenizer_file(path_or_name)
    if path:
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # the Rust side raises a bare Exception for unreadable JSON
            raise TokenizerNotFound(f"{path}: not a tokenizers JSON file ({exc})") from exc
    else:
        try:
            tokenizer = Tokenizer.from_pretrained(path_or_name)
        except Exception as exc:  # the hub client raises many types; the user needs one sentence
            raise TokenizerNotFound(
                f"{path_or_name}: not a local tokenizer and the hub did not provide it ({exc}); "
                "pass a directory with tokenizer.json"
            ) from exc
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def tokenizer_file(path_or_name: str) -> Optional[str]:
    """The tokenizer.json that `path_or_name` (a directory, the file, or a hub name) designates; None
    for a hub name. Raises TokenizerNotFound for a local path that holds none."""
    path = os.path.expanduser(path_or_name)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise TokenizerNotFound(f"{path_or_name}: directory has no tokenizer.json")
    if os.path.isfile(path):
        return path
    if path.endswith(".json") or os.path.isabs(path) or path.startswith("."):
        raise TokenizerNotFound(f"{path_or_name}: no such tokenizer file or directory")
    return None


def tokenizer_fingerprint(path_or_name: str) -> str:
    """sha256 of the tokenizer's JSON content, whatever its path: what a dataset records of the
    tokenizer that made it, and what training compares with --tokenizer-model.

    The file's JSON is hashed canonically (sorted keys, no whitespace), without its truncation and
    padding settings, which never change the ids of a stored document (load_tokenizer turns them
    off): the same tokenizer copied, moved or re-indented keeps its fingerprint, while any change to
    its vocabulary, merges, normalizer or template changes it. The file is read rather than
    re-serialized by `tokenizers`, whose output format changes between versions. A hub tokenizer has
    no local file: its serialization is hashed instead.
    """
    path = tokenizer_file(path_or_name)
    if path:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        text = load_tokenizer(path_or_name).to_str()
    try:
        content = json.loads(text)
    except ValueError as exc:
        raise TokenizerNotFound(f"{path}: not a tokenizers JSON file ({exc})") from exc
    content = {k: v for k, v in content.items() if k not in ("truncation", "padding")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def special_ids(tokenizer: Tokenizer, multiple: int = 64) -> SpecialIds:
    """Return the ids of [UNK]/[CLS]/[SEP]/[PAD]/[MASK]; raise if the tokenizer lacks one."""
    ids = {}
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise TokenizerNotFound(f"tokenizer has no {token} token (Ettin needs {SPECIAL_TOKENS})")
        ids[token.strip("[]").lower()] = token_id
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    padded = -(-size // multiple) * multiple
    return SpecialIds(vocab_size=size, padded_vocab_size=padded, **ids)


def ordinary_ids(tokenizer: Tokenizer) -> tuple:
    """(num_ordinary_tokens, extra_special_token_ids) of EttinDatasetConfig for ``tokenizer``.

    The ordinary ids (masked, and drawn as random replacements) are those of the tokenizer's model
    vocabulary (what BPE produces from text) that are not special tokens. A token added *beyond* the
    model vocabulary is never ordinary, special or not: ModernBERT's 83 ``[unusedN]`` placeholders
    (50285-50367) are not marked special, yet no training text contains them and their embeddings
    stay untrained, so masking or drawing them teaches nothing. Non-special added tokens *inside*
    the model vocabulary stay ordinary: ModernBERT's whitespace runs (50254-50278) and id 0 are text
    tokens. For ModernBERT this is [0, 50280) minus <|padding|> and <|endoftext|>, the same 50,278
    ids as EttinDatasetConfig's defaults.
    """
    special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    ordinary = set(tokenizer.get_vocab(with_added_tokens=False).values()) - special
    if not ordinary:
        raise TokenizerNotFound("tokenizer has no ordinary tokens (its model vocabulary is empty or all special)")
    num_ordinary = max(ordinary) + 1
    return num_ordinary, tuple(sorted(set(range(num_ordinary)) - ordinary))


def dataset_token_ids(tokenizer: Tokenizer) -> dict:
    """EttinDatasetConfig's token-id fields for ``tokenizer``: its special ids, and which ids are
    ordinary (``ordinary_ids``' rule)."""
    num_ordinary, extra_specials = ordinary_ids(tokenizer)
    return dict(**special_ids(tokenizer).token_id_fields(), num_ordinary_tokens=num_ordinary,
                extra_special_token_ids=extra_specials)
