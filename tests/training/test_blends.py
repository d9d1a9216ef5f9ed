"""Weighted blends train: a --data-mix YAML and a weighted --data-path, with and without validation.

Megatron's dataset builder refuses a None split size next to blend weights; every Ettin recipe uses a
mixture, so a size the run does not read must reach it as 0 (this crashed every recipe once).
"""

import math

import pytest

from tests.ranks import run_ranks
from tests.training.training_data import base_args, write_corpus


def _train(rank, overrides):
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    history = pretrain(make_arguments(**base_args(**overrides)))
    return [row for row in history if "loss" in row], [row for row in history if "val_loss" in row]


def _two_prefixes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return write_corpus(tmp_path / "a", seed=1), write_corpus(tmp_path / "b", seed=2)


@pytest.mark.parametrize("eval_iters", [0, 1])
def test_weighted_data_path_trains(tmp_path, eval_iters):
    a, b = _two_prefixes(tmp_path)
    steps, valid = run_ranks(1, _train, dict(prefix=a, data_path=["0.3", a, "0.7", b], train_iters=3,
                                             eval_iters=eval_iters, eval_interval=3))[0]
    assert len(steps) == 3 and all(math.isfinite(row["loss"]) for row in steps)
    assert len(valid) == (1 if eval_iters else 0)


def test_data_mix_trains(tmp_path):
    a, b = _two_prefixes(tmp_path)
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"name: two\ndatasets:\n  - prefix: {a}\n    weight: 2\n  - prefix: b/docs\n    weight: 1\n")
    steps, valid = run_ranks(1, _train, dict(prefix=a, data_path=[], data_mix=str(mix), train_iters=3,
                                             eval_iters=1, eval_interval=3))[0]
    assert len(steps) == 3 and all(math.isfinite(row["loss"]) for row in steps)
    assert len(valid) == 1 and math.isfinite(valid[0]["val_loss"])
