"""The embedding never takes an id outside the vocabulary, at any TP.

At TP=2 megatron's VocabParallelEmbedding gives an id outside every rank's shard a zero vector, so
without the model's own check an out-of-range id trains silently; at TP=1 it is an IndexError deep
in the embedding. Both must now raise the model's one clear error.
"""

import re

import pytest
import torch

from ettin_megatron.data.batches import collate
from ettin_megatron.model import EttinModel, packed_seq_params
from tests.hf_models import VOCAB, tiny_config
from tests.ranks import run_ranks

MESSAGE = f"token ids must lie in [0, {VOCAB}), the model's vocabulary"


def forward(model, ids):
    tokens = torch.tensor(ids)
    batch = collate([{"tokens": tokens, "labels": tokens, "loss_mask": torch.ones(len(ids)),
                      "segment_lengths": [len(ids)]}])
    params = packed_seq_params(batch["cu_seqlens"], batch["max_seqlen"])
    return model(batch["tokens"], batch["position_ids"], packed_seq_params=params)


def _forward_at_tp2(rank):
    """Logits of in-range ids, then the error of an id = VOCAB (None if the forward went through)."""
    from megatron.core import tensor_parallel

    from ettin_megatron.runtime import ParallelLayout, initialize

    initialize(ParallelLayout(tensor_parallel=2))
    model = EttinModel(tiny_config("bidirectional", tensor_model_parallel_size=2), spec="local")
    logits = tensor_parallel.gather_from_tensor_model_parallel_region(forward(model, [5, 9, VOCAB - 1, 7]))
    try:
        forward(model, [5, 9, VOCAB, 7])
    except RuntimeError as error:
        return logits.shape, str(error)
    return logits.shape, None


def test_out_of_vocabulary_id_raises_at_tp2():
    for shape, error in run_ranks(2, _forward_at_tp2):
        assert shape == (1, 4, VOCAB)  # in-range ids still go through
        assert error is not None and MESSAGE in error


@pytest.mark.parametrize("bad", [VOCAB, -1])
def test_out_of_vocabulary_id_raises_at_tp1(bad):
    model = EttinModel(tiny_config("bidirectional"), spec="local")
    with pytest.raises(RuntimeError, match=re.escape(MESSAGE)):
        forward(model, [5, bad, 7])
