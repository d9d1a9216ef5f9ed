"""Every attention backend on this machine matches the sdpa reference, and sdpa matches a dense
softmax written out from the definition (document mask, window, causality)."""

import math
import sys
import types

import pytest
import torch

from ettin_megatron.model import EttinModel
from ettin_megatron.model.attention import (
    AttentionMask,
    EttinCoreAttention,
    available_backends,
    sdpa_attention,
)
from ettin_megatron.model.ettin_model import packed_seq_params
from tests.hf_models import tiny_config

LENGTHS = [40, 7, 25, 1]
HEADS, DIM = 2, 64  # the tiny config's heads and head dim (TE builds its kernel for them)


def dense_reference(q, k, v, lengths, window, causal):
    """softmax(q k^T / sqrt(d) + mask) v over the whole packed row, masks built element by element."""
    total = sum(lengths)
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    allowed = torch.zeros(total, total, dtype=torch.bool)
    for i in range(total):
        for j in range(total):
            ok = doc[i] == doc[j]
            if window is not None:
                ok = ok and abs(i - j) <= window
            if causal:
                ok = ok and j <= i
            allowed[i, j] = bool(ok)
    scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hij,jhd->ihd", scores.softmax(-1), v)


def packed_qkv(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(sum(LENGTHS), HEADS, DIM, generator=generator) for _ in range(3)]


@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_the_definition(window, causal):
    q, k, v = packed_qkv()
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    mask = AttentionMask(cu, max(LENGTHS), window, causal)
    out = sdpa_attention(q, k, v, mask, scale=1 / math.sqrt(DIM), dropout_p=0.0)
    expected = dense_reference(q, k, v, LENGTHS, window, causal)
    assert torch.allclose(out, expected, atol=1e-5)


# Backends other than the reference that run here; flex runs everywhere for its forward pass (eager on
# the CPU, where it has no backward), so its block mask is checked on every machine.
OTHER_BACKENDS = ["flex"] + [b for b in available_backends() if b not in ("sdpa", "flex")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def backend_inputs(backend: str, seed: int) -> list[torch.Tensor]:
    """q, k, v on this machine's device; flash-attn and TE take half precision only."""
    dtype = torch.bfloat16 if backend in ("flash", "te") else torch.float32
    return [x.to(DEVICE, dtype) for x in packed_qkv(seed)]


def tolerance(backend: str) -> float:
    """float32 on the CPU: summation order only; on a GPU, TF32 (flex) or bfloat16 (flash, te)."""
    if DEVICE == "cpu":
        return 1e-5
    return 3e-2 if backend in ("flash", "te") else 2e-3


def attend(backend: str, attention: str, layer_number: int, q, k, v) -> torch.Tensor:
    """One layer's core attention (layer 1 is global, layer 2 local) on the packed documents."""
    config = tiny_config(attention, local_attention_window=8, attention_backend_name=backend)
    module = EttinCoreAttention(config, layer_number=layer_number).to(DEVICE)
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    return module(q, k, v, None, packed_seq_params=packed_seq_params(cu, max(LENGTHS)))


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
@pytest.mark.parametrize("layer_number", [1, 2])
def test_backend_matches_sdpa(backend, attention, layer_number, monkeypatch):
    if DEVICE == "cpu":  # let the CPU construct the flex module for a forward-only check
        monkeypatch.setattr("ettin_megatron.model.attention.available_backends", lambda: ["sdpa", "flex"])
    q, k, v = backend_inputs(backend, seed=layer_number)
    with torch.no_grad():
        out = attend(backend, attention, layer_number, q, k, v)
        expected = attend("sdpa", attention, layer_number, q.float(), k.float(), v.float())
    assert out.shape == (sum(LENGTHS), HEADS * DIM)
    assert torch.allclose(out.float(), expected, atol=tolerance(backend))


@pytest.mark.parametrize("backend", ["flex", "flash", "te"])
@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
@pytest.mark.parametrize("layer_number", [1, 2])
def test_backend_backward_matches_sdpa(backend, attention, layer_number):
    """Gradients of q, k and v through each backend equal those through sdpa (in float32)."""
    if DEVICE == "cpu":
        pytest.skip(f"{backend}'s backward needs a GPU (flex has none on the CPU in torch 2.13; "
                    "flash-attn and TE are GPU-only)")
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed on this machine")
    inputs = [x.requires_grad_() for x in backend_inputs(backend, seed=layer_number)]
    references = [x.detach().float().requires_grad_() for x in inputs]
    grad_out = torch.randn(sum(LENGTHS), HEADS * DIM, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    attend(backend, attention, layer_number, *inputs).backward(grad_out.to(inputs[0].dtype))
    attend("sdpa", attention, layer_number, *references).backward(grad_out)
    for name, x, reference in zip("qkv", inputs, references):
        assert torch.allclose(x.grad.float(), reference.grad, atol=tolerance(backend)), name


def test_unknown_or_unavailable_backend_is_refused_with_one_line():
    from ettin_megatron.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown attention backend 'xformers'"):
        tiny_config("bidirectional", attention_backend_name="xformers")
    if "flash" not in available_backends():
        with pytest.raises(ConfigError, match="not available on this machine"):
            EttinCoreAttention(tiny_config("bidirectional", attention_backend_name="flash"), layer_number=1)


class StandInDotProductAttention(torch.nn.Module):
    """Stands in for Transformer Engine's DotProductAttention, which is not installed on the CPU test
    machines: like TE's, it has a (non-persistent) buffer and extra state, where TE keeps its FP8
    metadata. It checks the wiring of our TE backend (TE's module is reached by .eval(), .to() and the
    state dicts, and checkpoints keep one layout across backends), not TE itself: TE's forward is
    compared with sdpa's by test_backend_matches_sdpa where TE is installed."""

    def __init__(self, **kwargs):
        super().__init__()
        self.register_buffer("scaling", torch.ones(2), persistent=False)
        self.restored = "never"

    def get_extra_state(self):
        return torch.tensor([1.0, 2.0])

    def set_extra_state(self, state):
        self.restored = state


def test_te_attention_is_a_registered_submodule(monkeypatch):
    transformer_engine = types.ModuleType("transformer_engine")
    transformer_engine.pytorch = types.ModuleType("transformer_engine.pytorch")
    transformer_engine.pytorch.DotProductAttention = StandInDotProductAttention
    monkeypatch.setitem(sys.modules, "transformer_engine", transformer_engine)
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", transformer_engine.pytorch)
    monkeypatch.setattr("ettin_megatron.model.attention.available_backends", lambda: ["sdpa", "te"])
    te_model = EttinModel(tiny_config("bidirectional", num_layers=2, attention_backend_name="te"), spec="local")
    sdpa_model = EttinModel(tiny_config("bidirectional", num_layers=2, attention_backend_name="sdpa"), spec="local")
    te_modules = [m for m in te_model.modules() if isinstance(m, StandInDotProductAttention)]
    assert len(te_modules) == 2  # one per layer

    te_model.eval()
    assert not any(m.training for m in te_modules)
    te_model.to(torch.float64)
    assert all(m.scaling.dtype == torch.float64 for m in te_modules)

    state = te_model.state_dict()
    te_state = [k for k in state if k.endswith("core_attention.kernel._extra_state")]
    assert len(te_state) == 2 and all(torch.equal(state[k], torch.tensor([1.0, 2.0])) for k in te_state)
    assert set(te_state) <= set(te_model.sharded_state_dict())  # what dist checkpoints save
    # One checkpoint layout for every backend: each loads the other's (a TE run resumes a CPU one).
    assert set(te_model.sharded_state_dict()) == set(sdpa_model.sharded_state_dict())
    te_model.load_state_dict(sdpa_model.state_dict())
    assert all(m.restored is None for m in te_modules)
    for m in te_modules:
        m.restored = "never"
    without_extra_state = {k: v for k, v in state.items() if not k.endswith("kernel._extra_state")}
    te_model.load_state_dict(without_extra_state)  # an HF import has none
    sdpa_model.load_state_dict(without_extra_state)
    assert all(m.restored is None for m in te_modules)
    sdpa_model.load_state_dict(state)
