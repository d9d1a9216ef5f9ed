"""collate (the packed micro-batch contract), unpad and repad."""

import numpy
import pytest
import torch

from ettin_megatron.data.batches import collate, repad, unpad

PAD = 1003


def sample(tokens, segment_lengths, labelled=()):
    tokens = numpy.asarray(tokens, dtype=numpy.int64)
    loss_mask = numpy.zeros(len(tokens), numpy.float32)
    loss_mask[list(labelled)] = 1.0
    return {
        "tokens": tokens,
        "labels": numpy.where(loss_mask > 0, tokens + 100, 0),
        "loss_mask": loss_mask,
        "segment_lengths": numpy.asarray(segment_lengths, dtype=numpy.int64),
        "dataset_id": 0,
    }


SAMPLES = [
    sample([1, 2, 3, 4, 5], [3, 2], labelled=[1]),
    sample([6, 7, 8, 9], [4], labelled=[0, 3]),
]


def test_collate_packs_samples_into_one_row():
    batch = collate(SAMPLES)
    assert batch["tokens"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert batch["labels"].tolist() == [[0, 102, 0, 0, 0, 106, 0, 0, 109]]
    assert batch["loss_mask"].tolist() == [[0, 1, 0, 0, 0, 1, 0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["cu_seqlens"].tolist() == [0, 3, 5, 9]
    assert batch["max_seqlen"] == 4 and type(batch["max_seqlen"]) is int
    assert batch["num_tokens"] == 9 and type(batch["num_tokens"]) is int
    for key in ("tokens", "labels", "position_ids"):
        assert batch[key].dtype == torch.long
    assert batch["loss_mask"].dtype == torch.float32 and batch["cu_seqlens"].dtype == torch.int32


def test_pad_to_multiple_of_appends_one_masked_pad_segment():
    batch = collate(SAMPLES, pad_to_multiple_of=4, pad_token_id=PAD)
    assert batch["tokens"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, PAD, PAD, PAD]]
    assert batch["labels"][0, 9:].tolist() == [0, 0, 0]
    assert batch["loss_mask"][0, 9:].tolist() == [0, 0, 0]
    assert batch["position_ids"][0, 9:].tolist() == [0, 1, 2]
    assert batch["cu_seqlens"].tolist() == [0, 3, 5, 9, 12]
    assert batch["max_seqlen"] == 4
    assert batch["num_tokens"] == 9  # the samples' tokens: padding is not counted
    # Already a multiple: nothing is added.
    assert collate(SAMPLES, pad_to_multiple_of=3)["cu_seqlens"].tolist() == [0, 3, 5, 9]


def test_collate_rejects_segments_that_do_not_cover_the_tokens():
    with pytest.raises(ValueError, match="segment_lengths"):
        collate([sample([1, 2, 3], [2])])


def test_unpad_and_repad_round_trip():
    input_ids = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0], [1, 2, 3, 4]])
    attention_mask = (input_ids != 0).long()
    batch = unpad(input_ids, attention_mask)
    assert batch["tokens"].tolist() == [[5, 6, 7, 8, 1, 2, 3, 4]]
    assert batch["cu_seqlens"].tolist() == [0, 3, 4, 8] and batch["max_seqlen"] == 4
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 2, 3]]
    assert not batch["labels"].any() and not batch["loss_mask"].any()
    assert torch.equal(repad(batch["tokens"], attention_mask), input_ids)
    hidden = torch.randn(1, 8, 3)
    padded = repad(hidden, attention_mask)
    assert padded.shape == (4, 4, 3) and not padded[attention_mask == 0].any()
    assert torch.equal(padded[attention_mask.bool()][None], hidden)
    # A trailing padding segment from collate is dropped by repad.
    assert torch.equal(repad(torch.cat([hidden, torch.ones(1, 4, 3)], 1), attention_mask), padded)
