"""The command lines: megatron-to-hf / hf-to-megatron with --verify (exit 0 / 1), both directions as the
other architecture (encoder <-> decoder), and one real subprocess run of the CPU demo's last two commands."""

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


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_round_trip_with_verify(capsys, hf_dirs, tmp_path, attention):
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs[attention]), "--save", str(ckpt), "--verify",
                 "--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2"]) == 0
    assert "ok tolerance" in verify_line(capsys)
    assert main(["megatron-to-hf", "--load", str(ckpt), "--output", str(out), "--verify"]) == 0
    assert "ok tolerance" in verify_line(capsys)
    # an impossible tolerance fails with exit 1 (the two implementations differ in rounding)
    assert main(["megatron-to-hf", "--load", str(ckpt), "--output", str(out), "--verify", "--tolerance", "1e-12"]) == 1
    assert "ABOVE tolerance" in verify_line(capsys)


@pytest.mark.parametrize("source, target", [("bidirectional", "causal"), ("causal", "bidirectional")])
def test_as_the_other_attention(capsys, hf_dirs, tmp_path, source, target):
    """Encoder weights as a decoder (and the reverse), exported and imported, parity-checked."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs[source]), "--save", str(ckpt)]) == 0
    assert main(["megatron-to-hf", "--load", str(ckpt), "--output", str(out), "--attention", target, "--verify"]) == 0
    assert "ok tolerance" in verify_line(capsys)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == {"bidirectional": "modernbert", "causal": "modernbert-decoder"}[target]
    assert (out / "generation_config.json").exists() == (target == "causal")
    window = json.loads((hf_dirs[source] / "config.json").read_text())["local_attention"]
    w = window if source == "bidirectional" else window - 2  # the decoder writes 2 * (w/2 + 1)
    assert config["local_attention"] == (w if target == "bidirectional" else w + 2)
    # same weights, other names: the embedding and the MLPs are identical
    a, b = safetensors_dict(hf_dirs[source] / "model.safetensors"), safetensors_dict(out / "model.safetensors")
    assert torch.equal(a["model.embeddings.tok_embeddings.weight"], b["model.embeddings.tok_embeddings.weight"])
    assert torch.equal(a["model.layers.1.mlp.Wi.weight"], b["model.layers.1.mlp.Wi.weight"])
    # and the import side: decoder checkpoint from an encoder directory (or the reverse)
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs[source]), "--save", str(tmp_path / "x"),
                 "--attention", target, "--verify"]) == 0
    assert "ok tolerance" in verify_line(capsys)


@pytest.mark.parametrize("attention, legacy", [("bidirectional", "mlm"), ("causal", "clm")])
def test_a_checkpoint_that_stores_its_attention_as_objective_still_converts(capsys, hf_dirs, tmp_path, attention, legacy):
    """Checkpoints written before the model field was named ``attention`` store ``"objective": "mlm" | "clm"``
    in ettin_config.json; they load as that attention, here exported and parity-checked."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs[attention]), "--save", str(ckpt)]) == 0
    stored = ckpt / "iter_0000000" / "ettin_config.json"
    description = json.loads(stored.read_text())
    assert description["model"].pop("attention") == attention
    description["model"]["objective"] = legacy
    stored.write_text(json.dumps(description, indent=2) + "\n")
    capsys.readouterr()
    assert main(["megatron-to-hf", "--load", str(ckpt), "--output", str(out), "--verify"]) == 0
    kind = {"bidirectional": "encoder: EttinModel -> ModernBertForMaskedLM",
            "causal": "decoder: EttinModel -> ModernBertDecoderForCausalLM"}[attention]
    assert f"({kind})" in capsys.readouterr().out
    original, exported = (safetensors_dict(d / "model.safetensors") for d in (hf_dirs[attention], out))
    assert all(torch.equal(t, original[n]) for n, t in exported.items())


def test_bfloat16_export(hf_dirs, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs["bidirectional"]), "--save", str(ckpt)]) == 0
    assert main(["megatron-to-hf", "--load", str(ckpt), "--output", str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    tensors = safetensors_dict(tmp_path / "hf" / "model.safetensors")
    original = safetensors_dict(hf_dirs["bidirectional"] / "model.safetensors")
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
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs["bidirectional"]), "--save", str(ckpt)]) == 0
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
        (bare / name).write_bytes((hf_dirs["causal"] / name).read_bytes())
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


@pytest.mark.parametrize("attention", [None, "bidirectional"], ids=["same", "cross"])
def test_verify_uses_the_conversion_tokenizer(capsys, hf_dirs, tokenizer_dir, tmp_path, attention):
    """--verify of an import tokenizes with --tokenizer when the HF directory has none; without any
    tokenizer it fails in one line before converting."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((hf_dirs["causal"] / name).read_bytes())
    cross = ["--attention", attention] if attention else []
    assert main(["hf-to-megatron", "--hf-dir", str(bare), "--save", str(tmp_path / "c"), "--tokenizer",
                 str(tokenizer_dir), "--verify", *cross]) == 0
    assert "ok tolerance" in verify_line(capsys)
    assert main(["hf-to-megatron", "--hf-dir", str(bare), "--save", str(tmp_path / "d"), "--verify", *cross]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "pass --tokenizer" in err, err
    assert not (tmp_path / "d").exists()
