"""--tensorboard-dir and --wandb-project: the scalars each writer stored are the values the run logged.
The run trains with StableAdamW: no gradient clipping, yet its gradient norm is logged, and beside it the
share of tensors whose update StableAdamW clipped.

TensorBoard's event files are read with its own EventAccumulator; the offline W&B run (WANDB_MODE=offline)
with wandb's protobuf records (tests/training/wandb_records.py): both independently of our writers.
"""

import os

import pytest

from tests.ranks import run_ranks
from tests.training.training_data import base_args, write_corpus
from tests.training.wandb_records import history as wandb_history


def _train(rank, prefix, logdir, wandb_dir):
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONFIG_DIR=wandb_dir,
                      WANDB_CACHE_DIR=wandb_dir, WANDB_DATA_DIR=wandb_dir)
    args = make_arguments(**base_args(prefix, train_iters=4, eval_iters=1, eval_interval=2,
                                      tensorboard_dir=logdir, wandb_project="ettin-test", wandb_exp_name="tiny",
                                      wandb_save_dir=wandb_dir, optimizer="stableadamw"))
    return pretrain(args)


@pytest.mark.timeout(300)
def test_tensorboard_and_wandb_scalars_match_the_logged_history(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prefix, logdir, wandb_dir = write_corpus(tmp_path), str(tmp_path / "tb"), str(tmp_path / "wandb")
    (history,) = run_ranks(1, _train, prefix, logdir, wandb_dir)
    events = EventAccumulator(logdir)
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    logged = [(row["step"], row["loss"]) for row in history if "loss" in row]
    assert [step for step, _ in scalars["train/loss"]] == [step for step, _ in logged] == [1, 2, 3, 4]
    for (_, got), (_, want) in zip(scalars["train/loss"], logged):
        assert abs(got - want) <= 1e-6 * abs(want)  # stored as float32
    validation = [(row["step"], row["val_loss"]) for row in history if "val_loss" in row]
    assert [step for step, _ in scalars["valid/loss"]] == [step for step, _ in validation] == [2, 4]
    tags = {"train/lr", "train/grad_norm", "train/clipped_updates", "train/tokens_per_s", "train/peak_memory_gb",
            "valid/accuracy"}
    assert tags <= set(scalars)
    clipped = [row["clipped"] for row in history if "loss" in row]
    assert [value for _, value in scalars["train/clipped_updates"]] == pytest.approx(clipped, rel=1e-6)
    assert 0 < max(clipped) <= 1 and all(row["grad_norm"] > 0 for row in history if "loss" in row)

    # W&B: one row per logged step (train/* and, at 2 and 4, valid/* merged into it), float64 exact.
    rows = {row["_step"]: row for row in wandb_history(wandb_dir)}
    assert sorted(rows) == [1, 2, 3, 4]
    train = [row for row in history if "loss" in row]
    assert [rows[r["step"]]["train/loss"] for r in train] == [r["loss"] for r in train]
    assert [rows[r["step"]]["train/lr"] for r in train] == [r["lr"] for r in train]
    assert [rows[r["step"]]["train/grad_norm"] for r in train] == [r["grad_norm"] for r in train]
    assert [rows[r["step"]]["train/clipped_updates"] for r in train] == [r["clipped"] for r in train]
    assert [rows[r["step"]]["train/tokens_per_s"] for r in train] == [r["tokens_per_s"] for r in train]
    assert [rows[step]["valid/loss"] for step in (2, 4)] == [loss for _, loss in validation]
    assert all(f"{tag}" in rows[4] for tag in tags)
