"""The CPU emulation: what it redirects, that Megatron's CUDA-only paths then run, and that it is
inert on a machine with CUDA."""

import subprocess
import sys

import pytest
import torch

from ettin_megatron.runtime import ParallelLayout, cpu_emulation_enabled, enable_cpu_emulation, initialize

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the emulation is for CUDA-less machines")


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    initialize()


def test_cuda_placement_lands_on_the_cpu():
    assert enable_cpu_emulation() and cpu_emulation_enabled()
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.tensor([1.0], device="cuda:0").device.type == "cpu"
    assert torch.empty(3, device=torch.cuda.current_device()).device.type == "cpu"
    x = torch.ones(2)
    assert x.cuda() is x and x.to("cuda").device.type == "cpu"
    assert torch.nn.Linear(2, 2).cuda().weight.device.type == "cpu"
    assert torch.nn.Parameter(torch.ones(1)).type() == "torch.cuda.FloatTensor"
    assert x.type(torch.float64).dtype == torch.float64  # type(dtype) still converts
    torch.cuda.synchronize()
    event = torch.cuda.Event(enable_timing=True)
    event.record()


def test_rng_tracker_forks_a_separate_stream_and_restores_the_default():
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(123)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    before = torch.get_rng_state()
    with tracker.fork():
        inside = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    with tracker.fork():
        again = torch.rand(4)
    assert not torch.equal(inside, again)  # the forked stream advanced
    tensor_parallel.model_parallel_cuda_manual_seed(123)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        assert torch.equal(torch.rand(4), inside)  # and is reproducible from the seed


def test_megatron_optimizer_with_clipping_steps_on_the_cpu():
    """get_megatron_optimizer allocates on 'cuda' and checks 'torch.cuda.FloatTensor' types; the
    optimizer --clip-grad builds scales every gradient by clip / (global norm) before its step."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from ettin_megatron.config import ettin_config
    from ettin_megatron.model import EttinModel
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.optimizer import build_optimizer

    clip = 0.05
    config = ettin_config("tiny", vocab_size=256, num_layers=1)
    model = DistributedDataParallel(config, DistributedDataParallelConfig(), EttinModel(config, spec="local"))
    optimizer = build_optimizer(make_arguments(lr=1e-2, clip_grad=clip), [model])
    tokens = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    model.zero_grad_buffer()
    model(tokens, torch.arange(32)[None], labels=tokens).mean().backward()
    raw = [p.main_grad.detach().clone() for p in model.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw])).item()
    assert norm > 2 * clip  # so that clipping must change the gradients
    success, grad_norm, _ = optimizer.step()
    assert success and grad_norm == pytest.approx(norm, rel=1e-5)  # the norm before clipping
    scale = clip / (norm + 1e-6)  # megatron's clip_coeff
    for param, gradient in zip(model.parameters(), raw):
        torch.testing.assert_close(param.grad, gradient * scale, rtol=1e-5, atol=1e-9)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_layout_must_divide_the_world():
    assert ParallelLayout(tensor_parallel=2, pipeline_parallel=2).data_parallel(8) == 2
    with pytest.raises(ValueError, match="world size 6 is not divisible by tensor x pipeline parallel"):
        ParallelLayout(tensor_parallel=4).data_parallel(6)


def test_inert_when_cuda_is_available():
    """With CUDA present nothing is patched: torch.cuda keeps its functions and no mode is pushed."""
    probe = (
        "import torch\n"
        "torch.cuda.is_available = lambda: True\n"
        "original = torch.cuda.synchronize\n"
        "from ettin_megatron.runtime import enable_cpu_emulation, cpu_emulation_enabled\n"
        "assert enable_cpu_emulation() is False and not cpu_emulation_enabled()\n"
        "assert torch.cuda.synchronize is original\n"
        "from torch.overrides import _get_current_function_mode_stack\n"
        "assert not _get_current_function_mode_stack()\n"
        "print('inert')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "inert" in result.stdout
