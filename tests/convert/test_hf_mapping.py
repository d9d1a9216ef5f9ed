"""The mapping's own checks: the HF shapes it expects from a config are the shapes the model has,
and a HF state dict with a tensor of another shape is refused in one line naming it."""

import re

import pytest

from ettin_megatron.convert.hf_mapping import from_hf_state_dict, hf_shapes, to_hf_state_dict
from ettin_megatron.errors import ConfigError
from ettin_megatron.model import EttinModel
from tests.hf_models import random_hf_model, tiny_config


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_expected_shapes_are_the_models(attention):
    config = tiny_config(attention, num_layers=3)
    model = EttinModel(config, spec="local")
    state = {k: v for k, v in model.state_dict().items() if "_extra_state" not in k}
    assert hf_shapes(config) == {name: tuple(t.shape) for name, t in to_hf_state_dict(state, config).items()}


@pytest.mark.parametrize("attention, name", [
    ("bidirectional", "model.layers.1.mlp.Wo.weight"),
    ("bidirectional", "model.layers.0.attn.Wqkv.weight"),  # transposed: the same number of elements
    ("causal", "model.final_norm.weight"),
])
def test_a_tensor_of_another_shape_is_refused(attention, name):
    state = random_hf_model(tiny_config(attention)).state_dict()
    good = state[name]
    state[name] = good.t().contiguous() if good.dim() == 2 else good[:-1]
    with pytest.raises(ConfigError, match=re.escape(f"shape mismatch: {name} is {tuple(state[name].shape)}")):
        from_hf_state_dict(state, tiny_config(attention))
    del state[name]
    with pytest.raises(ConfigError, match=re.escape(f"tensor '{name}' is missing")):
        from_hf_state_dict(state, tiny_config(attention))
