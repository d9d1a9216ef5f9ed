"""Seeding at PP=2: each pipeline stage starts from seed + 100 x its stage, as in Megatron-LM.

With one seed for all stages, corresponding layers of the stages would be initialized alike and draw
the same dropout masks. (Comparing the stages' first layers would not show it: the first stage's
embedding draws before its layers.)
"""

import random

import numpy as np
import torch

from tests.ranks import run_ranks

SEED = 21


def first_draws(rank):
    """The first number of every stream ``initialize`` seeds, and what seed + 100 x stage gives."""
    from megatron.core import parallel_state, tensor_parallel

    from ettin_megatron.runtime import ParallelLayout, initialize

    initialize(ParallelLayout(pipeline_parallel=2), seed=SEED)
    with tensor_parallel.get_cuda_rng_tracker().fork():  # the tensor-parallel stream
        tracker = torch.rand(4)
    draws = {"python": random.random(), "numpy": np.random.rand(), "torch": torch.rand(4), "tracker": tracker}
    expected = torch.rand(4, generator=torch.Generator().manual_seed(SEED + 100 * rank))
    return parallel_state.get_pipeline_model_parallel_rank(), draws, expected


def test_pipeline_stages_get_their_own_seed():
    (stage0, first, expected0), (stage1, second, expected1) = run_ranks(2, first_draws)
    assert (stage0, stage1) == (0, 1)
    for stream in first:
        assert not np.array_equal(np.asarray(first[stream]), np.asarray(second[stream])), stream
    # the default torch stream is Megatron-LM's: seed + 100 x pipeline rank
    assert torch.equal(first["torch"], expected0) and torch.equal(second["torch"], expected1)
