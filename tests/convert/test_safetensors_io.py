"""The streaming safetensors writer produces files safetensors reads back exactly."""

import json

import pytest
import torch
from safetensors import safe_open

from ettin_megatron.convert.safetensors_io import HFWeights, write_safetensors
from ettin_megatron.errors import ConfigError


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_written_file_reads_back(tmp_path, dtype):
    tensors = {"b": torch.randn(3, 5), "a.weight": torch.randn(7).T, "ids": torch.arange(4), "empty": torch.zeros(0, 2),
               "view": torch.randn(4, 6)[:, 1:3]}
    write_safetensors(tmp_path / "model.safetensors", tensors, dtype=dtype)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        for name, t in tensors.items():
            want = t.to(dtype) if dtype is not None and t.is_floating_point() else t
            assert torch.equal(f.get_tensor(name), want), name
    weights = HFWeights(tmp_path)
    assert set(weights) == set(tensors) and "b" in weights and "c" not in weights
    assert weights.shape("view") == (4, 2)


def test_missing_or_corrupt_weights(tmp_path):
    with pytest.raises(ConfigError, match="no model.safetensors"):
        HFWeights(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        HFWeights(tmp_path)


def test_sharded_directory_with_index(tmp_path):
    first, second = {"a": torch.randn(2, 3)}, {"b": torch.randn(4).bfloat16()}
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", first)
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", second)
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    weights = HFWeights(tmp_path)
    assert torch.equal(weights["a"], first["a"]) and torch.equal(weights["b"], second["b"])
    assert weights.dtype("b") == torch.bfloat16
    out = torch.empty(2, 3)
    weights.entry("a").read_into(out)
    assert torch.equal(out, first["a"])
