"""Mixture YAML files -> Megatron's blend list; the three Ettin phases carry the recipe's numbers."""

import os
import re

import pytest

from ettin_megatron.data.mixtures import mixture_blend
from ettin_megatron.errors import InputError

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples", "mixtures")

#: Ettin recipe: (sources, billions of tokens) per phase.
PHASES = {"phase1": (13, 1704.7), "phase2": (10, 249.3), "phase3": (9, 76.3)}


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_ettin_phase_mixtures(phase, monkeypatch):
    monkeypatch.setenv("ETTIN_DATA", "/data/ettin")
    weights, prefixes = mixture_blend(os.path.join(EXAMPLES, f"{phase}.yaml"))
    sources, total = PHASES[phase]
    assert len(prefixes) == len(set(prefixes)) == sources
    assert sum(weights) == pytest.approx(total)
    assert all(p.startswith(f"/data/ettin/{phase}/") and p.endswith("_input_ids_document") for p in prefixes)
    assert weights == sorted(weights, reverse=True)  # listed largest first, as in the paper


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_header_commands_make_exactly_the_mixture_prefixes(phase, monkeypatch):
    """The header's loop converts each released folder into `<folder>_input_ids_document` (the output
    name preprocess_data.py gives --json-keys input_ids): one folder per prefix, none missing."""
    monkeypatch.setenv("ETTIN_DATA", "/data/ettin")
    path = os.path.join(EXAMPLES, f"{phase}.yaml")
    header = " ".join(line.lstrip("#").strip().rstrip("\\") for line in open(path) if line.startswith("#"))
    folders = re.search(r"for src in (.*?); do", header).group(1).split()
    assert f"--input $ETTIN_RAW/{phase}/$src --json-keys input_ids" in header
    assert f"--output-prefix $ETTIN_DATA/{phase}/$src " in header
    assert mixture_blend(path)[1] == [f"/data/ettin/{phase}/{f}_input_ids_document" for f in folders]


def test_unset_placeholder_is_reported(monkeypatch):
    monkeypatch.delenv("ETTIN_DATA", raising=False)
    with pytest.raises(InputError, match="ETTIN_DATA is not set"):
        mixture_blend(os.path.join(EXAMPLES, "phase1.yaml"))


def test_relative_prefixes_weights_and_existence(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"")
    (tmp_path / "a.idx").write_bytes(b"")
    mix = tmp_path / "mix.yaml"
    mix.write_text("datasets:\n  - {prefix: a.idx, weight: 3}\n  - {prefix: sub/b, weight: 0.5}\n")
    assert mixture_blend(str(mix)) == ([3.0, 0.5], [str(tmp_path / "a"), str(tmp_path / "sub" / "b")])
    with pytest.raises(InputError, match=r"datasets\[2\]: no dataset at .*sub/b"):
        mixture_blend(str(mix), check_exists=True)


@pytest.mark.parametrize(
    "body,match",
    [
        ("datasets: []\n", "expected a 'datasets:' list"),
        ("datasets:\n  - {prefix: a}\n", r"datasets\[1\]: needs 'prefix' and 'weight'"),
        ("datasets:\n  - {prefix: a, weight: -1}\n", "weight must be a positive number"),
        ("datasets:\n  - {prefix: a, weight: lots}\n", "weight must be a positive number"),
    ],
)
def test_malformed_mixtures(tmp_path, body, match):
    mix = tmp_path / "mix.yaml"
    mix.write_text(body)
    with pytest.raises(InputError, match=match):
        mixture_blend(str(mix))
