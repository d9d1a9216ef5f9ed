"""The command lines: megatron-to-hf / hf-to-megatron with --verify (exit 0 / 1), cross-objective
exports both ways, and one real subprocess run of the CPU demo's last two commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools.convert_checkpoint import main

from .helpers import safetensors_dict

REPO = Path(__file__).resolve().parents[2]


def verify_line(capsys):
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("verify:")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_round_trip_with_verify(capsys, hf_dirs, tmp_path, objective):
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs[objective]), "--save", str(ckpt), "--verify",
                 "--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2"]) == 0
    assert "ok tolerance" in verify_line(capsys)
    assert main(["megatron-to-hf", "--load", str(ckpt), "--output", str(out), "--verify"]) == 0
    assert "ok tolerance" in verify_line(capsys)
    # an impossible tolerance fails with exit 1 (the two implementations differ in rounding)
    assert main(["megatron-to-hf", "--load", str(ckpt), "--output", str(out), "--verify", "--tolerance", "1e-12"]) == 1
    assert "ABOVE tolerance" in verify_line(capsys)


@pytest.mark.parametrize("source, target", [("mlm", "clm"), ("clm", "mlm")])
def test_cross_objective(capsys, hf_dirs, tmp_path, source, target):
    """Encoder weights as a decoder (and the reverse), exported and imported, parity-checked."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs[source]), "--save", str(ckpt)]) == 0
    assert main(["megatron-to-hf", "--load", str(ckpt), "--output", str(out), "--objective", target, "--verify"]) == 0
    assert "ok tolerance" in verify_line(capsys)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == {"mlm": "modernbert", "clm": "modernbert-decoder"}[target]
    assert (out / "generation_config.json").exists() == (target == "clm")
    window = json.loads((hf_dirs[source] / "config.json").read_text())["local_attention"]
    w = window if source == "mlm" else window - 2  # the decoder writes 2 * (w/2 + 1)
    assert config["local_attention"] == (w if target == "mlm" else w + 2)
    # same weights, other names: the embedding and the MLPs are identical
    a, b = safetensors_dict(hf_dirs[source] / "model.safetensors"), safetensors_dict(out / "model.safetensors")
    assert torch.equal(a["model.embeddings.tok_embeddings.weight"], b["model.embeddings.tok_embeddings.weight"])
    assert torch.equal(a["model.layers.1.mlp.Wi.weight"], b["model.layers.1.mlp.Wi.weight"])
    # and the import side: decoder checkpoint from an encoder directory (or the reverse)
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs[source]), "--save", str(tmp_path / "x"),
                 "--objective", target, "--verify"]) == 0
    assert "ok tolerance" in verify_line(capsys)


def test_bfloat16_export(hf_dirs, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs["mlm"]), "--save", str(ckpt)]) == 0
    assert main(["megatron-to-hf", "--load", str(ckpt), "--output", str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    tensors = safetensors_dict(tmp_path / "hf" / "model.safetensors")
    original = safetensors_dict(hf_dirs["mlm"] / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert all(torch.equal(t, original[n].bfloat16()) for n, t in tensors.items())
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    # a bf16 HF directory imports as a bf16 checkpoint and exports back unchanged
    assert main(["hf-to-megatron", "--hf-dir", str(tmp_path / "hf"), "--save", str(tmp_path / "c2")]) == 0
    assert main(["megatron-to-hf", "--load", str(tmp_path / "c2"), "--output", str(tmp_path / "hf2")]) == 0
    again = safetensors_dict(tmp_path / "hf2" / "model.safetensors")
    assert all(torch.equal(t, again[n]) for n, t in tensors.items())


def test_demo_commands_in_a_subprocess(hf_dirs, tmp_path):
    """What the CPU demo runs last: python tools/convert_checkpoint.py ..., python tools/fill_mask.py ..."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs["mlm"]), "--save", str(ckpt)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in (["tools/convert_checkpoint.py", "megatron-to-hf", "--load", str(ckpt), "--output", str(out)],
                 ["tools/fill_mask.py", str(out), "The quick brown [MASK] jumps."]):
        done = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.strip().splitlines()) == 6  # the text and five predictions
    bad = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "megatron-to-hf", "--load", str(tmp_path / "x"),
                          "--output", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in bad.stderr


def test_hf_directory_without_tokenizer(capsys, hf_dirs, tokenizer_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((hf_dirs["clm"] / name).read_bytes())
    assert main(["hf-to-megatron", "--hf-dir", str(bare), "--save", str(tmp_path / "c1")]) == 0
    assert "no tokenizer.json" in capsys.readouterr().out
    code = main(["megatron-to-hf", "--load", str(tmp_path / "c1"), "--output", str(tmp_path / "o")])
    assert code == 2 and "pass --tokenizer" in capsys.readouterr().err
    assert main(["megatron-to-hf", "--load", str(tmp_path / "c1"), "--output", str(tmp_path / "o"),
                 "--tokenizer", str(tokenizer_dir)]) == 0
    assert (tmp_path / "o" / "tokenizer.json").is_file() and (tmp_path / "o" / "generation_config.json").is_file()
    # or give the tokenizer at import time: it is stored with the checkpoint and found again
    assert main(["hf-to-megatron", "--hf-dir", str(bare), "--save", str(tmp_path / "c2"), "--tokenizer", str(tokenizer_dir)]) == 0
    assert main(["megatron-to-hf", "--load", str(tmp_path / "c2"), "--output", str(tmp_path / "o2")]) == 0


@pytest.mark.parametrize("objective", [None, "mlm"], ids=["same", "cross"])
def test_verify_uses_the_conversion_tokenizer(capsys, hf_dirs, tokenizer_dir, tmp_path, objective):
    """--verify of an import tokenizes with --tokenizer when the HF directory has none; without any
    tokenizer it fails in one line before converting."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((hf_dirs["clm"] / name).read_bytes())
    cross = ["--objective", objective] if objective else []
    assert main(["hf-to-megatron", "--hf-dir", str(bare), "--save", str(tmp_path / "c"), "--tokenizer",
                 str(tokenizer_dir), "--verify", *cross]) == 0
    assert "ok tolerance" in verify_line(capsys)
    assert main(["hf-to-megatron", "--hf-dir", str(bare), "--save", str(tmp_path / "d"), "--verify", *cross]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "pass --tokenizer" in err, err
    assert not (tmp_path / "d").exists()
