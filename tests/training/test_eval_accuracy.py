"""Validation accuracy under tensor parallelism: each rank reduces its own vocabulary shard (no
full-vocabulary logits gathered), and the count of correct tokens is the full-vocabulary argmax's."""

import torch
import torch.nn.functional as F

from tests.ranks import run_ranks

VOCAB, TOKENS = 64, 40


def logits_and_labels():
    """Random logits [1, T, V] and labels, with ties for the maximum across the two vocabulary halves
    (TP=2 shards): at ties the full argmax takes the lower index, whichever shard the label is in."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, TOKENS, VOCAB, generator=generator)
    labels = torch.randint(VOCAB, (1, TOKENS), generator=generator)
    labels[0, :10] = logits[0, :10].argmax(-1)  # some correct predictions
    for t, (low, high) in enumerate([(3, 40), (20, 50), (31, 32), (0, 63)]):  # a tie per token 10..13
        logits[0, 10 + t, [low, high]] = logits[0, 10 + t].max() + 1.0
        labels[0, 10 + t] = low if t % 2 else high
    loss_mask = (torch.rand(1, TOKENS, generator=generator) < 0.8).float()
    loss_mask[0, :14] = 1.0
    return logits, labels, loss_mask


def eval_on_tp_rank(rank, logits, labels, loss_mask):
    from megatron.core import tensor_parallel

    from ettin_megatron.runtime import ParallelLayout, initialize
    from ettin_megatron.training.forward_step import eval_loss_func

    def no_gather(*args, **kwargs):
        raise AssertionError("validation gathered the full-vocabulary logits")

    tensor_parallel.gather_from_tensor_model_parallel_region = no_gather
    initialize(ParallelLayout(tensor_parallel=2))
    shard = logits.chunk(2, dim=-1)[rank]
    _, _, report = eval_loss_func(labels, loss_mask, shard)
    return report["lm loss"].tolist()


def test_tp2_accuracy_is_the_full_vocabulary_argmax():
    logits, labels, loss_mask = logits_and_labels()
    mask = loss_mask.reshape(-1)
    correct = ((logits.argmax(-1) == labels).float().reshape(-1) * mask).sum().item()
    loss = (F.cross_entropy(logits[0], labels[0], reduction="none") * mask).sum().item()
    assert 10 <= correct < TOKENS  # the batch has right and wrong predictions, ties among both
    for loss_sum, tokens, rank_correct in run_ranks(2, eval_on_tp_rank, logits, labels, loss_mask):
        assert rank_correct == correct
        assert tokens == mask.sum().item()
        assert abs(loss_sum - loss) <= 1e-5 * abs(loss)
