"""The small files of a Hugging Face model directory: config checks, tokenizer, generation and
sentence-transformers configs.

Everything here is cheap and runs before any weight is read, so that a wrong path, an unknown model
type or a tokenizer that does not fit the model fails in one line before the heavy work starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..data.tokenizer import load_tokenizer, special_ids
from ..errors import ConfigError, TokenizerNotFound
from ..files import write_json
from ..vocab import transformers_tokenizer_files
from .hf_mapping import ARCHITECTURES, MODEL_TYPES

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def read_hf_config_json(directory: str | Path) -> dict:
    """config.json of a HF directory, checked to be a ModernBERT encoder or decoder (one-line errors)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory; pass a Hugging Face model directory.")
    path = directory / "config.json"
    if not path.is_file():
        raise ConfigError(f"{directory} has no config.json; not a Hugging Face model directory.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}).") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_TYPES.values():
        raise ConfigError(
            f"{directory}: unknown model type {model_type!r}; this converter handles ModernBERT encoders "
            f"and decoders ({', '.join(MODEL_TYPES.values())})."
        )
    return config


def read_exported_config(directory: str | Path, attention: str) -> dict:
    """config.json of an exported directory that must hold a model of this ``attention`` ("bidirectional":
    an encoder, "causal": a decoder), so that fill-mask and generate refuse the other kind in one line."""
    config = read_hf_config_json(directory)
    if config["model_type"] != MODEL_TYPES[attention]:
        kind = {"bidirectional": "an encoder", "causal": "a decoder"}[attention]
        raise ConfigError(f"{directory} is not {kind} ({ARCHITECTURES[attention]}); pass a directory exported "
                          "from one.")
    return config


def resolve_tokenizer(path: str | None, relative_to: Path | None = None) -> Path:
    """The local tokenizer directory or tokenizer.json named by ``path`` (never a hub download)."""
    if not path:
        raise ConfigError("no tokenizer is known for this checkpoint; pass --tokenizer DIR (with tokenizer.json).")
    candidates = [Path(path).expanduser()]
    if relative_to is not None:
        if not candidates[0].is_absolute():
            candidates += [parent / path for parent in [relative_to, *relative_to.parents]]
        candidates.append(relative_to.parent / "tokenizer")  # hf-to-megatron's copy, after a move
    for candidate in candidates:
        if (candidate.is_dir() and (candidate / "tokenizer.json").is_file()) or (
            candidate.is_file() and candidate.suffix == ".json"
        ):
            return candidate
    raise ConfigError(
        f"tokenizer {path!r} is not a local directory with tokenizer.json (hub names are not downloaded); "
        "pass --tokenizer DIR."
    )


def tokenizer_ids(tokenizer_path: Path, model_vocab_size: int) -> dict:
    """[CLS] / [SEP] / [PAD] / [MASK] ids of the tokenizer, checked against the model's vocabulary."""
    try:
        ids = special_ids(load_tokenizer(str(tokenizer_path)))
    except TokenizerNotFound as exc:
        raise ConfigError(f"tokenizer {tokenizer_path}: {exc}.") from None
    if ids.vocab_size > model_vocab_size:
        raise ConfigError(
            f"vocabulary mismatch: tokenizer {tokenizer_path} has {ids.vocab_size} tokens but the model's "
            f"embedding has {model_vocab_size} rows; use the tokenizer the model was trained with."
        )
    return ids.token_id_fields()


def copy_tokenizer(tokenizer_path: Path, out_dir: Path, model_max_length: int | None = None) -> None:
    """Copy tokenizer.json and its two small configs; write the configs where the source lacks them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_path.is_dir():
        for name in TOKENIZER_FILES:
            if (tokenizer_path / name).is_file():
                shutil.copyfile(tokenizer_path / name, out_dir / name)
    else:
        shutil.copyfile(tokenizer_path, out_dir / "tokenizer.json")
    for name, content in transformers_tokenizer_files(model_max_length).items():
        if not (out_dir / name).is_file():
            write_json(out_dir / name, content)
    _no_bpe_cleanup(out_dir)


def _no_bpe_cleanup(out_dir: Path) -> None:
    """Turn off ``clean_up_tokenization_spaces`` in a BPE tokenizer's copied config (ModernBERT's says
    true): transformers ignores it for BPE, whose decoding it would corrupt, and warns at every load."""
    config_path, tokenizer_path = out_dir / "tokenizer_config.json", out_dir / "tokenizer.json"
    config = json.loads(config_path.read_text())
    if config.get("clean_up_tokenization_spaces") and json.loads(tokenizer_path.read_text())["model"]["type"] == "BPE":
        write_json(config_path, {**config, "clean_up_tokenization_spaces": False})


def write_generation_config(out_dir: Path, ids: dict) -> None:
    """generation_config.json of a decoder: [CLS] starts, [SEP] ends, [PAD] pads."""
    import transformers

    write_json(out_dir / "generation_config.json", {
        "bos_token_id": ids["cls_token_id"],
        "eos_token_id": ids["sep_token_id"],
        "pad_token_id": ids["pad_token_id"],
        "transformers_version": transformers.__version__,
    })


def frame_prompts_for_generation(out_dir: Path, ids: dict) -> None:
    """Make an exported decoder's tokenizer frame text as ``[CLS] text``, with bos [CLS] and eos [SEP].

    Training wraps each document as [CLS] text [SEP] (the data keeps that framing), and [SEP] is the
    generation EOS: a prompt ending in [SEP] is an ended document, so ``generate(**tokenizer(prompt))``
    would continue past it. The exported tokenizer.json therefore adds only [CLS], and its configs name
    bos / eos as Hugging Face's generation utilities and pipelines expect."""
    from tokenizers import Tokenizer, processors

    tokenizer = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    cls, sep = tokenizer.id_to_token(ids["cls_token_id"]), tokenizer.id_to_token(ids["sep_token_id"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A", pair=f"{cls} $A $B:1", special_tokens=[(cls, ids["cls_token_id"])])
    tokenizer.save(str(out_dir / "tokenizer.json"))
    for name in TOKENIZER_FILES[1:]:
        content = json.loads((out_dir / name).read_text(encoding="utf-8"))
        write_json(out_dir / name, {**content, "bos_token": cls, "eos_token": sep})


def write_sentence_transformers_files(out_dir: Path, attention: str, hidden_size: int, max_seq_length: int) -> None:
    """modules.json + configs so that ``SentenceTransformer(out_dir)`` embeds with the exported model:
    mean pooling for an encoder, last-token pooling for a decoder. Written in the long-standing
    (sentence-transformers 2.x-5.x) layout, which newer releases still read."""
    write_json(out_dir / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ])
    write_json(out_dir / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    write_json(out_dir / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": "3.0.0"},
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    chosen = "mean_tokens" if attention == "bidirectional" else "lasttoken"
    write_json(out_dir / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden_size,
        **{f"pooling_mode_{mode}": mode == chosen for mode in modes},
        "include_prompt": True,
    })
