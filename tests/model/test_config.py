"""The size presets have the published parameter counts; bad configurations fail early, in one line."""

import pytest
import torch

from ettin_megatron.config import PRESETS, attention_of, ettin_config
from ettin_megatron.errors import ConfigError
from ettin_megatron.model import EttinModel
from ettin_megatron.model.init import initialize_weights

# Parameter counts (tied embeddings) from the Ettin paper / ../shared/ettin-recipe.md.
PUBLISHED = {"17m": 16.9e6, "32m": 32.1e6, "68m": 68.5e6, "150m": 149.7e6, "400m": 395.9e6, "1b": 1031e6}


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_preset_parameter_count_matches_the_paper(size):
    config = ettin_config(size, perform_initialization=False)
    with torch.device("meta"):  # shapes only: no memory, no init
        model = EttinModel(config, spec="local")
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - PUBLISHED[size]) / PUBLISHED[size] <= 0.005


def test_presets_have_64_dim_heads_and_the_recipe_defaults():
    for size, preset in PRESETS.items():
        if size != "tiny":
            assert preset.hidden_size // preset.num_attention_heads == 64
    config = ettin_config("150m")
    assert config.kv_channels == 64 and config.vocab_size == 50368
    assert [config.is_global_layer(i) for i in range(7)] == [True, False, False, True, False, False, True]
    assert config.local_attention_window == 128 and config.layernorm_epsilon == 1e-5
    assert not config.add_bias_linear and config.gated_linear_unit


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size="2b"), "unknown model size '2b'; use one of tiny, 17m"),
        (dict(size="150m", tensor_model_parallel_size=5), "12 attention heads are not divisible by tensor parallel size 5"),
        (dict(size="150m", pipeline_model_parallel_size=4), "22 layers cannot be split evenly into PP x VPP = 4"),
        (dict(size="150m", pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
         "22 layers cannot be split evenly into PP x VPP = 4"),
        (dict(size="150m", seq_length=16384), "sequence length 16384 exceeds the model's position limit 8192"),
        (dict(size="tiny", attention="mlm"), "unknown attention 'mlm'; use one of bidirectional, causal."),
        (dict(size="tiny", hidden_sizes=3), "unknown config field(s) hidden_sizes"),
    ],
)
def test_invalid_configuration_fails_with_one_line(kwargs, message):
    size = kwargs.pop("size")
    with pytest.raises(ConfigError) as error:
        ettin_config(size, **kwargs)
    text = str(error.value)
    assert message in text
    assert "\n" not in text


def test_each_training_objective_trains_one_attention():
    """MNTP turns a decoder into an encoder: it trains bidirectional attention, as MLM does."""
    assert {o: attention_of(o) for o in ("mlm", "mntp", "clm")} == {
        "mlm": "bidirectional", "mntp": "bidirectional", "clm": "causal"}
    with pytest.raises(ConfigError, match=r"^unknown training objective 'causal'; use one of mlm, mntp, clm\.$"):
        attention_of("causal")


@pytest.mark.parametrize("init", ["construction", "layout-independent"])
def test_initialisation_follows_the_recipe(init):
    """Truncated normals (2 sigma) of std 0.02, output projections 0.02 / sqrt(2 x layers); norms 1, bias 0:
    both as the model is built and as training redraws it (model/init.py)."""
    torch.manual_seed(0)
    config = ettin_config("17m")
    model = EttinModel(config, spec="local")
    if init == "layout-independent":
        before = {name: param.clone() for name, param in model.named_parameters()}
        initialize_weights(model, seed=0)
        assert not torch.equal(before["embedding.word_embeddings.weight"], model.embedding.word_embeddings.weight)
    out_std = 0.02 / (2 * config.num_layers) ** 0.5
    for name, param in model.named_parameters():
        if name.endswith("norm.weight") or "layernorm" in name:
            assert torch.equal(param, torch.ones_like(param)), name
        elif name == "output_layer.bias":
            assert torch.equal(param, torch.zeros_like(param))
        else:
            std = out_std if ("linear_proj" in name or "linear_fc2" in name or name == "head.dense.weight") else 0.02
            assert param.abs().max() <= 2 * std + 1e-7, name
            assert abs(param.std().item() - 0.88 * std) < 0.05 * std, name  # std of a 2-sigma truncated normal
