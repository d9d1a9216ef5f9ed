"""--tensorboard-dir: the scalars TensorBoard reads back are the losses the run logged.

The event files are read with TensorBoard's own EventAccumulator, independently of our writer.
"""

from tests.ranks import run_ranks
from tests.training.training_data import SPECIAL, base_args, write_corpus


def _train(rank, prefix, logdir):
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain

    args = make_arguments(**base_args(prefix, train_iters=4, eval_iters=1, eval_interval=2,
                                      tensorboard_dir=logdir))
    return pretrain(args, special_tokens=SPECIAL)


def test_tensorboard_scalars_match_the_logged_history(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prefix, logdir = write_corpus(tmp_path), str(tmp_path / "tb")
    (history,) = run_ranks(1, _train, prefix, logdir)
    events = EventAccumulator(logdir)
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    logged = [(row["step"], row["loss"]) for row in history if "loss" in row]
    assert [step for step, _ in scalars["train/loss"]] == [step for step, _ in logged] == [1, 2, 3, 4]
    for (_, got), (_, want) in zip(scalars["train/loss"], logged):
        assert abs(got - want) <= 1e-6 * abs(want)  # stored as float32
    validation = [(row["step"], row["val_loss"]) for row in history if "val_loss" in row]
    assert [step for step, _ in scalars["valid/loss"]] == [step for step, _ in validation] == [2, 4]
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s", "valid/accuracy"} <= set(scalars)
