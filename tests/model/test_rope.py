"""RoPE on packed batches: one vectorised rotation, no host sync per document, same numbers as
Megatron's THD RoPE."""

import pytest
import torch
from megatron.core.transformer.attention import SelfAttention
from torch.overrides import TorchFunctionMode

from ettin_megatron.data.batches import collate
from ettin_megatron.model import EttinModel, packed_seq_params
from ettin_megatron.model.rope import GLOBAL, LOCAL, rotary_angles_by_kind
from tests.hf_models import VOCAB, tiny_config

# What makes the host wait for the device when the tensor lives on a GPU: reading a value back.
HOST_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy,
    torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
    torch.equal, torch.Tensor.nonzero, torch.nonzero,
}


class HostSyncCounter(TorchFunctionMode):
    """Counts the calls that read a tensor's value back to the host (a device sync on a GPU), on CPU
    tensors, where nothing syncs: the count is what a CUDA run would pay."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def packed_batch(num_documents: int, total: int = 96) -> dict:
    """``total`` random tokens cut into ``num_documents`` documents of unequal lengths."""
    generator = torch.Generator().manual_seed(num_documents)
    cuts = torch.randperm(total - 1, generator=generator)[: num_documents - 1] + 1
    bounds = [0, *sorted(cuts.tolist()), total]
    samples = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        tokens = torch.randint(4, VOCAB, (end - start,), generator=generator)
        samples.append({"tokens": tokens, "labels": tokens, "loss_mask": torch.ones(end - start),
                        "segment_lengths": [end - start]})
    return collate(samples)


def forward(model, batch):
    params = packed_seq_params(batch["cu_seqlens"], batch["max_seqlen"])
    return model(batch["tokens"], batch["position_ids"], packed_seq_params=params)


def test_host_syncs_per_forward_do_not_grow_with_the_documents():
    torch.manual_seed(0)
    model = EttinModel(tiny_config("bidirectional", num_layers=3), spec="local").eval()
    counts = {}
    for num_documents in (2, 8, 32):
        batch = packed_batch(num_documents)
        with torch.no_grad(), HostSyncCounter() as counter:
            forward(model, batch)
        counts[num_documents] = counter.count
    assert counts[2] == counts[8] == counts[32], counts


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_rotation_equals_megatrons_thd_rope(attention):
    """Each attention layer's output, bit for bit, is what Megatron's SelfAttention gives when it applies
    the same angle table itself (its THD path, document by document)."""
    torch.manual_seed(0)
    config = tiny_config(attention, num_layers=2, global_rope_theta=160_000.0, local_rope_theta=10_000.0)
    model = EttinModel(config, spec="local").eval()
    batch = packed_batch(5)
    params = packed_seq_params(batch["cu_seqlens"], batch["max_seqlen"])
    angles = rotary_angles_by_kind(batch["position_ids"], config)
    hidden = torch.randn(batch["tokens"].shape[1], 1, config.hidden_size)
    for layer, kind in zip(model.decoder.layers, (GLOBAL, LOCAL)):
        attention = layer.self_attention
        with torch.no_grad():
            ours, _ = attention(hidden, None, rotary_pos_emb=angles, packed_seq_params=params)
            megatrons, _ = SelfAttention.forward(attention, hidden, None, rotary_pos_emb=angles[kind],
                                                 packed_seq_params=params)
        assert torch.equal(ours, megatrons)
