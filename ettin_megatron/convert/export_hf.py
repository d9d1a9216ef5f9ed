"""megatron-to-hf: a dist checkpoint (any TP / PP) -> a Hugging Face model directory.

The directory holds config.json (ModernBertForMaskedLM or ModernBertDecoderForCausalLM, with layer
types, both RoPE thetas, the window and the tokenizer's special ids), model.safetensors, the tokenizer
files, generation_config.json (decoders) and the sentence-transformers files (mean pooling for an
encoder, last-token pooling for a decoder). ``attention`` exports the same weights as the other
architecture (an encoder checkpoint as a decoder, or the reverse).

An MNTP-trained checkpoint (decoder -> encoder) exported as an encoder is a ModernBertForMaskedLM whose
output at i predicts token i + 1: config.json says so under ``ettin_training_objective: "mntp"``
(hf_mapping.TRAINING_OBJECTIVE_KEY) and tools/fill_mask.py reads the mask's prediction one position
earlier. It is exported, not refused: its uses as an encoder (embeddings, fine-tuning) are unaffected.

Memory: the TP = PP = 1 model once, in the checkpoint's dtype, plus the re-laid QKV matrices (about a
quarter of the weights); the safetensors file is streamed tensor by tensor.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..cli import check_writable
from ..config import EttinConfig
from ..errors import ConfigError
from .hf_files import (
    copy_tokenizer,
    frame_prompts_for_generation,
    resolve_tokenizer,
    tokenizer_ids,
    write_generation_config,
    write_sentence_transformers_files,
)
from .hf_mapping import TRAINING_OBJECTIVE_KEY, hf_config, to_hf_state_dict
from .megatron_side import load_megatron_model, read_description
from .safetensors_io import write_safetensors

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def prepare_output(output: Path) -> Path:
    """A fresh staging directory next to ``output``; ``output`` may only be absent, empty, or an
    earlier export (a directory with config.json), which the finished export replaces."""
    if output.exists():
        if not output.is_dir():
            raise ConfigError(f"--output {output} is a file; pass a directory.")
        if any(output.iterdir()) and not (output / "config.json").is_file():
            raise ConfigError(f"--output {output} is neither empty nor a Hugging Face model directory; choose another.")
    check_writable(output.parent, "--output")
    staging = output.with_name(output.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def finish_output(staging: Path, output: Path) -> None:
    if output.exists():
        shutil.rmtree(output)
    os.replace(staging, output)


def megatron_to_hf(load: str | os.PathLike, output: str | os.PathLike, tokenizer: str | None = None,
                   attention: str | None = None, dtype: str | None = None, return_model: bool = False):
    """Export checkpoint ``load`` (root or iter_N) to the HF directory ``output``; returns its path,
    and the TP = PP = 1 model it was written from when ``return_model`` (for --verify)."""
    output = Path(output)
    directory, description = read_description(load)
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}.")
    tokenizer_path = resolve_tokenizer(tokenizer or description.get("tokenizer"), relative_to=directory)
    ids = tokenizer_ids(tokenizer_path, int(description["model"].get("vocab_size", EttinConfig.vocab_size)))
    staging = prepare_output(output)
    try:
        model, _ = load_megatron_model(directory, attention)
        config = model.config
        out_dtype = DTYPE_NAMES[dtype] if dtype else config.params_dtype
        hf = hf_config(config, ids)
        hf.dtype = {v: k for k, v in DTYPE_NAMES.items()}[out_dtype]
        if description.get("training_objective") == "mntp" and not config.causal:
            setattr(hf, TRAINING_OBJECTIVE_KEY, "mntp")
        hf.save_pretrained(staging)
        tensors = to_hf_state_dict(model.state_dict(), config)
        write_safetensors(staging / "model.safetensors", tensors, dtype=out_dtype)
        del tensors
        copy_tokenizer(tokenizer_path, staging, model_max_length=config.max_position_embeddings)
        write_sentence_transformers_files(staging, config.attention, config.hidden_size,
                                          min(config.max_position_embeddings, 8192))
        if config.causal:
            write_generation_config(staging, ids)
            frame_prompts_for_generation(staging, ids)
        finish_output(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return (output, model) if return_model else output
