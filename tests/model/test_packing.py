"""A packed sequence of several documents gives, for each document, the logits of that document alone."""

import pytest
import torch

from ettin_megatron.data.batches import collate
from ettin_megatron.model import EttinModel, packed_seq_params
from tests.hf_models import VOCAB, tiny_config


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_each_packed_document_matches_its_own_forward(attention):
    torch.manual_seed(0)
    model = EttinModel(tiny_config(attention, num_layers=4), spec="local").eval()
    lengths = [37, 5, 64, 1, 20]  # longer and shorter than the 16-token window, and a single token
    documents = [torch.randint(4, VOCAB, (n,)) for n in lengths]
    samples = [{"tokens": d, "labels": torch.zeros_like(d), "loss_mask": torch.zeros_like(d),
                "segment_lengths": [len(d)]} for d in documents]
    batch = collate(samples)
    with torch.no_grad():
        packed = model(batch["tokens"], batch["position_ids"],
                       packed_seq_params=packed_seq_params(batch["cu_seqlens"], batch["max_seqlen"]))[0]
        alone = [model(d[None], torch.arange(len(d))[None])[0] for d in documents]
    for doc_logits, part in zip(alone, torch.split(packed, lengths)):
        assert torch.allclose(part, doc_logits, atol=1e-5, rtol=0)


def test_a_token_sees_nothing_of_other_documents():
    """Changing one document leaves every other document's logits bit-for-bit the same."""
    torch.manual_seed(0)
    model = EttinModel(tiny_config("bidirectional"), spec="local").eval()
    a, b = torch.randint(4, VOCAB, (30,)), torch.randint(4, VOCAB, (25,))
    cu = torch.tensor([0, 30, 55], dtype=torch.int32)
    positions = torch.cat([torch.arange(30), torch.arange(25)])[None]
    with torch.no_grad():
        first = model(torch.cat([a, b])[None], positions, packed_seq_params=packed_seq_params(cu, 30))
        b_changed = torch.randint(4, VOCAB, (25,))
        second = model(torch.cat([a, b_changed])[None], positions, packed_seq_params=packed_seq_params(cu, 30))
    assert torch.equal(first[0, :30], second[0, :30])
    assert not torch.equal(first[0, 30:], second[0, 30:])
