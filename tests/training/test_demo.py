"""The README demo: ``bash examples/pretrain_ettin_encoder.sh`` with nothing but a work dir and a short
run set. It builds the corpus, tokenizer and data, trains the tiny encoder, and its loss falls."""

import os
import re
import subprocess
import sys

import pytest

from ettin_megatron.runtime.distributed import free_port

STEP = re.compile(r"^step\s+(\d+)/\d+ \| loss ([0-9.]+)", re.M)


def test_fp8_demo_without_transformer_engine_stops_before_any_work(tmp_path):
    """PRECISION=fp8 used to prepare the data and train in BF16 (the local layers ignore FP8)."""
    from ettin_megatron.model.layer_specs import te_available

    if te_available():
        pytest.skip("Transformer Engine is installed: PRECISION=fp8 can run")
    env = dict(os.environ, WORK_DIR=str(tmp_path / "demo"), PRECISION="fp8", PYTHON=sys.executable)
    done = subprocess.run(["bash", "examples/pretrain_ettin_encoder.sh"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and not (tmp_path / "demo").exists(), done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        'PRECISION=fp8 needs Transformer Engine: pip install -e ".[gpu]", or use PRECISION=bf16']


@pytest.mark.timeout(400)
def test_encoder_demo_runs_and_its_loss_falls(tmp_path):
    env = dict(os.environ, WORK_DIR=str(tmp_path / "demo"), TRAIN_ITERS="30", PYTHON=sys.executable,
               MASTER_PORT=str(free_port()))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run(["bash", "examples/pretrain_ettin_encoder.sh"], env=env, capture_output=True,
                          text=True, timeout=380)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    losses = {int(step): float(loss) for step, loss in STEP.findall(done.stdout)}
    assert min(losses) == 1 and max(losses) == 30, done.stdout
    assert losses[30] < losses[1] - 1.0, losses  # ln(4096) = 8.3 at the start; the unigram floor is ~6.5
    assert "validation step 30 | mlm loss" in done.stdout
    assert (tmp_path / "demo/checkpoints/encoder/latest_checkpointed_iteration.txt").read_text().strip() == "30"
    assert (tmp_path / "demo/hf/encoder/config.json").is_file()  # exported to Hugging Face
    assert "[MASK]" in done.stdout  # and the fill-mask prediction was shown


@pytest.mark.timeout(900)
def test_decoder_demo_generates_and_a_rerun_says_it_is_complete(tmp_path):
    """The decoder demo exports to Hugging Face and continues a prompt; the same command again resumes
    its checkpoint (LOAD defaults to SAVE), finds the run complete and exits 0 without training."""
    env = dict(os.environ, WORK_DIR=str(tmp_path / "demo"), TRAIN_ITERS="4", PYTHON=sys.executable,
               MASTER_PORT=str(free_port()))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    for run in range(2):
        done = subprocess.run(["bash", "examples/pretrain_ettin_decoder.sh"], env=env, capture_output=True,
                              text=True, timeout=420)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert (tmp_path / "demo/hf/decoder/config.json").is_file()
        assert "The Python standard library -> " in done.stdout
        assert done.stdout.count("this run is already complete, nothing to do.") == run
    assert (tmp_path / "demo/checkpoints/decoder/latest_checkpointed_iteration.txt").read_text().strip() == "4"
