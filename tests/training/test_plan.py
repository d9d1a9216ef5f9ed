"""The plan of a run (training/plan.py): resolved once, and right about the model it plans.

- The tokenizer is loaded once per process in a whole training run (checks, datasets, checkpoints).
- Full recompute's layer counts are checked against the run's model: with --num-layers, the layers that
  flag asks for, not the --model-size preset's (which the check used to read: a valid run was refused and
  an invalid one passed to fail inside megatron).
"""

import pytest

from ettin_megatron.training.arguments import make_arguments
from ettin_megatron.training.plan import plan_run
from tests.ranks import run_ranks
from tests.training.training_data import base_args, pretrain_error, write_corpus, write_tokenizer


def _count_tokenizer_loads(rank, prefix):
    from ettin_megatron.data import tokenizer as tokenizer_module
    from ettin_megatron.training.loop import pretrain

    loads, real = [], tokenizer_module.Tokenizer

    class Counting:  # the tokenizers class as data/tokenizer.py sees it, counting its loads
        @staticmethod
        def from_file(path):
            loads.append(path)
            return real.from_file(path)

        @staticmethod
        def from_pretrained(name):
            loads.append(name)
            return real.from_pretrained(name)

    tokenizer_module.Tokenizer = Counting
    try:
        rows = pretrain(make_arguments(**base_args(prefix, train_iters=3, eval_iters=1, eval_interval=2,
                                                   save=f"{prefix}-ckpt", num_workers=2)))
    finally:
        tokenizer_module.Tokenizer = real
    return loads, len([row for row in rows if "loss" in row])


@pytest.mark.timeout(300)
def test_a_training_run_loads_its_tokenizer_once(tmp_path):
    ((loads, steps),) = run_ranks(1, _count_tokenizer_loads, write_corpus(tmp_path))
    assert steps == 3 and loads == [str(tmp_path / "tokenizer.json")]


RECOMPUTE = ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers"]


def _argv(prefix, tokenizer, *extra) -> list[str]:
    return ["--data-path", prefix, "--tokenizer-model", tokenizer, "--train-iters", "2", "--global-batch-size", "8",
            "--micro-batch-size", "2", *extra]


def test_recompute_layers_are_checked_against_num_layers(capsys, tmp_path):
    """The tiny preset has 4 layers: --num-layers 8 allows groups of 8, --num-layers 2 no group of 4."""
    prefix, tokenizer = write_corpus(tmp_path), write_tokenizer(tmp_path)
    args = make_arguments(**base_args(prefix, num_layers=8, recompute_granularity="full", recompute_method="uniform",
                                      recompute_num_layers=8))
    assert plan_run(args, world_size=1).model.shape.num_layers == 8
    line = pretrain_error(capsys, _argv(prefix, tokenizer, "--num-layers", "2", *RECOMPUTE, "4"))
    assert line == "error: --recompute-num-layers 4 must be a divisor of the 2 layers of a pipeline chunk.", line


def test_a_data_path_given_as_its_bin_file_names_its_dataset(tmp_path):
    """--data-path takes a pasted .bin (or .idx) file name as its dataset's prefix, as the tools do."""
    prefix = write_corpus(tmp_path)
    assert plan_run(make_arguments(**base_args(prefix + ".bin")), world_size=1).blend[0] == [prefix]
