"""--load is checked before any work, and re-saving an iteration never loses the previous copy.

One spawned rank trains 2 steps (a full training checkpoint), resumes a copy of it whose description
names the model's attention the way older checkpoints did, writes a weights-only checkpoint and
re-saves iteration 2 with the final rename failing. The --load errors then run in this process through
``python -m ettin_megatron.pretrain``'s ``main``: one ``error:`` line, and no process group was made.
"""

import json
import os
import re
import shutil
from pathlib import Path
from unittest import mock

import pytest

from ettin_megatron.pretrain import main
from tests.ranks import run_ranks
from tests.training.training_data import VOCAB, base_args, pretrain_error, write_corpus, write_tokenizer


class _Killed(Exception):
    pass


def _checkpoints(rank, prefix, root):
    from megatron.core import dist_checkpointing

    from ettin_megatron import checkpoint
    from ettin_megatron.checkpoint import LATEST
    from ettin_megatron.files import temporary_name
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.loop import pretrain
    from ettin_megatron.training.plan import plan_model
    from ettin_megatron.training.setup import build_model, build_model_config, unwrap

    # MNTP (decoder -> encoder): an encoder model whose checkpoint must say how it was trained.
    args = make_arguments(**base_args(prefix, train_iters=2, save=f"{root}/run", objective="mntp"))
    pretrain(args)
    legacy = f"{root}/legacy"
    shutil.copytree(f"{root}/run", legacy)
    store_attention_as_objective(Path(legacy) / "iter_0000002", "mlm")
    rows = pretrain(make_arguments(**base_args(prefix, train_iters=3, load=legacy, save=legacy, objective="mntp",
                                               override_opt_param_scheduler=True)))
    resumed = ([row["step"] for row in rows if "loss" in row],
               json.loads((Path(legacy) / "iter_0000003" / "ettin_config.json").read_text())["model"]["attention"])
    config = build_model_config(plan_model(args, VOCAB))
    model = unwrap(build_model(args, config))
    checkpoint.save_checkpoint(f"{root}/weights", 0, model, config)  # as hf-to-megatron writes

    real_replace = os.replace

    def resave_failing_at(run, failing_rename) -> list[str]:
        """Re-save iteration 2 of ``run`` (weights only) with one rename failing; ``run``'s entries after."""
        def replace(src, dst):
            if failing_rename(Path(src)):
                raise _Killed
            real_replace(src, dst)

        with mock.patch.object(checkpoint.os, "replace", replace):
            try:
                checkpoint.save_checkpoint(run, 2, model, config)
                raise AssertionError("the patched rename should have failed the save")
            except _Killed:
                pass
        return sorted(os.listdir(run))

    def training_state(run) -> bool:
        final = checkpoint.iteration_dir(run, 2)
        return final.is_dir() and "training_state" in dist_checkpointing.load_common_state_dict(str(final))

    # The new iteration fails to move into place: the old one must be back.
    shutil.copytree(f"{root}/run", f"{root}/copy")
    entries = resave_failing_at(f"{root}/run", lambda src: src.name.endswith(".tmp") and src.is_dir())
    kept = training_state(f"{root}/run")
    # The marker fails after the new iteration is in place: the new one stays, the old copy goes.
    after_marker = resave_failing_at(f"{root}/copy", lambda src: src.name == temporary_name(LATEST))
    replaced = not training_state(f"{root}/copy")
    return kept, entries, replaced, after_marker, resumed


def store_attention_as_objective(iteration: Path, objective: str) -> None:
    """Rewrite a checkpoint's description as checkpoints written before the model field was named
    ``attention`` stored it: ``"objective": "mlm" | "clm"`` (checkpoint.save_checkpoint's JSON layout)."""
    stored = iteration / "ettin_config.json"
    description = json.loads(stored.read_text())
    del description["model"]["attention"]
    description["model"]["objective"] = objective
    stored.write_text(json.dumps(description, indent=2) + "\n")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    prefix = write_corpus(directory)
    (result,) = run_ranks(1, _checkpoints, prefix, str(directory))
    return prefix, directory, result


def _argv(prefix, *extra) -> list[str]:
    """The command line of the fixture's run: its objective, tokenizer and data (a resume must keep them)."""
    return ["--data-path", prefix, "--tokenizer-model", write_tokenizer(os.path.dirname(prefix)), "--vocab-size",
            str(VOCAB), "--objective", "mntp", "--seq-length", "32", "--micro-batch-size", "2",
            "--global-batch-size", "8", "--split", "90,10,0", "--attention-backend", "sdpa", "--spec", "local",
            "--eval-iters", "0", *extra]


def test_the_training_objective_is_recorded(checkpoints):
    """An MNTP encoder's head is shifted (its output at i predicts i + 1): export needs to know (export_hf)."""
    _, directory, _ = checkpoints
    description = json.loads((directory / "run" / "iter_0000002" / "ettin_config.json").read_text())
    assert (description["model"]["attention"], description["training_objective"]) == ("bidirectional", "mntp")


def test_a_checkpoint_that_stores_its_attention_as_objective_resumes(capsys, checkpoints, tmp_path):
    """Older checkpoints name the model's attention "objective" (mlm | clm): they resume as that attention,
    the next save stores it as "attention", and a change of shape is still refused."""
    prefix, root, (*_, (steps, attention)) = checkpoints
    assert (steps, attention) == ([3], "bidirectional")
    shutil.copytree(root / "run", tmp_path / "run")
    store_attention_as_objective(tmp_path / "run" / "iter_0000002", "mlm")
    line = pretrain_error(capsys, _argv(prefix, "--load", str(tmp_path / "run"), "--train-iters", "4",
                                        "--vocab-size", "2048"))
    assert "is another model shape (vocab_size 1024 vs 2048: checkpoint vs this run)" in line


def test_a_failed_resave_keeps_the_previous_iteration(checkpoints):
    _, _, (kept, entries, replaced, after_marker, _) = checkpoints
    assert kept, "iter_0000002 was deleted before its replacement was in place"
    assert entries == ["iter_0000002", "latest_checkpointed_iteration.txt"]
    assert replaced, "the new iteration was in place before the marker failed; it should stay"
    assert after_marker == entries  # no iter_0000002.old left behind


def test_resuming_a_finished_run_is_refused(capsys, checkpoints):
    prefix, root, _ = checkpoints
    line = pretrain_error(capsys, _argv(prefix, "--load", str(root / "run"),
                                        "--save", str(root / "next"), "--train-iters", "2"))
    assert re.fullmatch(re.escape(f"error: checkpoint {root / 'run' / 'iter_0000002'} is at iteration 2 / 16 samples / ")
                        + r"[1-9][\d,]* tokens" + re.escape(", already at or past this run's end; to start the next "
                        "phase from it pass --finetune (weights only) or raise --train-iters."), line), line
    line = pretrain_error(capsys, _argv(prefix, "--load", str(root / "run"), "--train-samples", "16"))
    assert line.endswith("raise --train-samples.")
    line = pretrain_error(capsys, _argv(prefix, "--load", str(root / "run"), "--train-tokens", "100"))
    assert line.endswith("raise --train-tokens.")
    assert not (root / "next").exists()


def test_relaunching_a_finished_run_succeeds_without_training(capsys, checkpoints):
    """--save == --load: a requeued job that is already done exits 0 and writes nothing."""
    prefix, root, _ = checkpoints
    before = {p: p.stat().st_mtime_ns for p in (root / "run").rglob("*")}
    argv = _argv(prefix, "--load", str(root / "run"), "--save", str(root / "run"), "--train-iters", "2")
    assert main(argv) == 0
    assert "this run is already complete, nothing to do." in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (root / "run").rglob("*")} == before


def test_finetune_needs_a_checkpoint(capsys, checkpoints, tmp_path):
    prefix, _, _ = checkpoints
    line = pretrain_error(capsys, _argv(prefix, "--load", str(tmp_path / "typo"), "--finetune",
                                        "--train-iters", "1"))
    assert line == f"error: --load {tmp_path / 'typo'} holds no checkpoint to fine-tune from; fix --load."


def test_a_damaged_checkpoint_is_one_line(capsys, checkpoints, tmp_path):
    prefix, root, _ = checkpoints
    shutil.copytree(root / "run", tmp_path / "run")
    (tmp_path / "run" / "iter_0000002" / "common.pt").write_bytes(b"not a torch file")
    line = pretrain_error(capsys, _argv(prefix, "--load", str(tmp_path / "run"), "--train-iters", "4"))
    assert line.startswith(f"error: {tmp_path / 'run' / 'iter_0000002'} is incomplete or damaged (")
    assert line.endswith("load an earlier iteration.")


def test_another_model_shape_is_refused(capsys, checkpoints):
    prefix, root, _ = checkpoints
    line = pretrain_error(capsys, _argv(prefix, "--load", str(root / "run"), "--train-iters", "4",
                                        "--vocab-size", "2048"))
    assert "is another model shape (vocab_size 1024 vs 2048: checkpoint vs this run)" in line
    line = pretrain_error(capsys, _argv(prefix, "--load", str(root / "run"), "--train-iters", "4",
                                        "--model-size", "17m"))
    assert "num_layers 4 vs 7, hidden_size 128 vs 256" in line


def test_weights_only_checkpoint_needs_finetune(capsys, checkpoints):
    prefix, root, _ = checkpoints
    line = pretrain_error(capsys, _argv(prefix, "--load", str(root / "weights"), "--train-iters", "4"))
    assert line.endswith("holds weights only (no training state); load it with --finetune.")


@pytest.mark.parametrize("marker, message", [
    ("12abc", "does not name an iteration ('12abc'); fix or delete it."),
    ("7", "names iteration 7 but"),
])
def test_a_bad_latest_marker_is_not_a_fresh_start(capsys, tmp_path, marker, message):
    prefix = write_corpus(tmp_path, num_docs=20)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text(marker + "\n")
    argv = _argv(prefix, "--load", str(tmp_path / "ckpt"), "--train-iters", "1")
    assert message in pretrain_error(capsys, argv)
    if marker == "7":
        (tmp_path / "ckpt" / "iter_0000007.old").mkdir()  # a re-save killed between its two renames
        assert "rename iter_0000007.old (its previous copy) back to iter_0000007." in pretrain_error(capsys, argv)


def test_a_save_that_holds_a_run_is_resumed_only_through_load(capsys, checkpoints, tmp_path):
    """Training afresh into it would move its latest marker back and orphan iteration 2."""
    prefix, root, _ = checkpoints
    shutil.copytree(root / "run", tmp_path / "run")
    line = pretrain_error(capsys, _argv(prefix, "--save", str(tmp_path / "run"), "--train-iters", "4"))
    assert line == (f"error: --save {tmp_path / 'run'} already holds a run (iter_0000002); pass --load "
                    f"{tmp_path / 'run'} to resume it, or choose another --save.")
    line = pretrain_error(capsys, _argv(prefix, "--load", str(root / "run"), "--save", str(tmp_path / "run"),
                                        "--finetune", "--train-iters", "4"))
    assert "already holds a run (iter_0000002)" in line
    assert (tmp_path / "run" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_another_lr_schedule_is_refused_unless_a_flag_says_which_wins(capsys, checkpoints):
    """A longer --train-iters moves the decay of a resumed run: refused unless Megatron-LM's
    --override-opt_param-scheduler (this run's) or --use-checkpoint-opt_param-scheduler (the
    checkpoint's) says which schedule wins; megatron's scheduler then takes that one."""
    from megatron.core import dist_checkpointing

    from ettin_megatron.config import model_fields
    from ettin_megatron.training import checkpointing
    from ettin_megatron.training.arguments import parse_args
    from ettin_megatron.training.optimizer import build_scheduler, load_schedule
    from ettin_megatron.training.plan import plan_run
    from ettin_megatron.training.setup import build_model_config

    prefix, root, _ = checkpoints
    run = str(root / "run")
    argv = _argv(prefix, "--load", run, "--save", run, "--train-iters", "4", "--lr-warmup-iters", "2")
    line = pretrain_error(capsys, argv)
    assert line == (f"error: checkpoint {root / 'run' / 'iter_0000002'} has another LR schedule (lr_decay_steps 17 "
                    "vs 32, wd_incr_steps 17 vs 32, wsd_decay_steps 16 vs 32: checkpoint vs this run, lengths in "
                    "the run's unit); pass "
                    "--use-checkpoint-opt_param-scheduler to keep the checkpoint's or "
                    "--override-opt_param-scheduler to use this run's.")
    saved = dist_checkpointing.load_common_state_dict(f"{run}/iter_0000002")["opt_param_scheduler"]

    class _Optimizer:
        param_groups = [{"params": [], "wd_mult": 1.0}]

    for flag, decay in (("--use-checkpoint-opt_param-scheduler", 17), ("--override-opt_param-scheduler", 32)):
        plan = plan_run(parse_args(argv + [flag]), world_size=1)
        fields = model_fields(build_model_config(plan.model))
        assert checkpointing.check_load(plan, fields) == root / "run" / "iter_0000002"
        scheduler = build_scheduler(plan.args, plan.schedule, _Optimizer())
        load_schedule(scheduler, saved)
        assert (scheduler.lr_decay_steps, scheduler.num_steps) == (decay, 16), flag
    both = ["--use-checkpoint-opt_param-scheduler", "--override-opt_param-scheduler"]
    assert "not both" in pretrain_error(capsys, argv + both)


@pytest.mark.parametrize("change, differs", [
    (["--optimizer", "stableadamw"], "--optimizer adam vs stableadamw"),
    (["--fully-decoupled-weight-decay"], "--fully-decoupled-weight-decay False vs True"),
    (["--use-distributed-optimizer"], "--use-distributed-optimizer False vs True"),
])
def test_resuming_under_other_optimizer_settings_is_refused(capsys, checkpoints, change, differs):
    """The moments mean other things under another update rule or weight decay rule, and the distributed
    optimizer lays its state out its own way: a resume keeps the checkpoint's settings (--finetune
    starts afresh from its weights)."""
    prefix, root, _ = checkpoints
    run = str(root / "run")
    line = pretrain_error(capsys, _argv(prefix, "--load", run, "--save", run, "--train-iters", "4",
                                        *change))
    assert line == (f"error: checkpoint {root / 'run' / 'iter_0000002'} was trained with other optimizer settings "
                    f"({differs}: checkpoint vs this run); resume with the checkpoint's, or start from its weights "
                    "with --finetune.")


@pytest.mark.parametrize("change, differs", [
    (["--objective", "clm"], "attention bidirectional vs causal, --objective mntp vs clm"),
    (["--objective", "mlm"], "--objective mntp vs mlm"),
    (["--data-layout", "packed"], "--data-layout document vs packed"),
    (["--global-rope-theta", "160000"], "global_rope_theta 10000.0 vs 160000.0"),
])
def test_resuming_as_another_run_is_refused(capsys, checkpoints, change, differs):
    """Issue 27, item 2: the decoder launcher on an encoder's SAVE continued the encoder's checkpoint as a
    decoder (its optimizer state, CLM, then saved as one). A resume keeps the training objective, the
    whole model, the tokenizer and the data layout; --finetune starts another run from the weights."""
    prefix, root, _ = checkpoints
    run = str(root / "run")
    argv = _argv(prefix, "--load", run, "--save", run, "--train-iters", "4", *change)
    assert pretrain_error(capsys, argv) == (
        f"error: checkpoint {root / 'run' / 'iter_0000002'} is another run ({differs}: checkpoint vs this run); "
        "resume it as it was, or start from its weights with --finetune (a new phase, or the other objective).")
    assert (root / "run" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_resuming_with_another_tokenizer_is_refused(capsys, checkpoints, tokenizer_dir):
    prefix, root, _ = checkpoints
    run = str(root / "run")
    argv = _argv(prefix, "--load", run, "--save", run, "--train-iters", "4")
    argv[argv.index("--tokenizer-model") + 1] = tokenizer_dir
    line = pretrain_error(capsys, argv)
    assert re.search(r"is another run \(tokenizer 1005 tokens, sha256 \w{12} vs \d+ tokens, sha256 \w{12}: checkpoint", line), line
