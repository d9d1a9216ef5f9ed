"""The sample-index cache: built once by rank 0 and memory-mapped by the others, beside the data by
default, and never taken for complete after a killed build."""

import os
import subprocess
import sys

import numpy
import pytest
import torch

from ettin_megatron.data.datasets import EttinDataset
from ettin_megatron.errors import ConfigError
from tests.data.test_datasets import config, same, samples, train, write_prefix
from tests.ranks import run_ranks


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "data").mkdir()
    return write_prefix(str(tmp_path / "data"), "docs", 60, max_len=80)[0]


def count_builds(monkeypatch):
    """Count EttinDataset._build_indices calls in this process (the split of each)."""
    calls, build = [], EttinDataset._build_indices
    monkeypatch.setattr(EttinDataset, "_build_indices", lambda self: calls.append(self.index_split.name) or build(self))
    return calls


def _two_ranks(rank, prefix):
    torch.distributed.init_process_group("gloo")
    builds = count_builds(pytest.MonkeyPatch())
    dataset = train(config(prefix, layout="document"), 50)  # no path_to_cache: the default location
    return len(builds), isinstance(dataset.sample_index, numpy.memmap), samples(dataset, range(0, len(dataset), 7))


def test_rank_0_builds_the_default_cache_once_and_every_rank_maps_it(corpus):
    (built0, mapped0, samples0), (built1, mapped1, samples1) = run_ranks(2, _two_ranks, corpus)
    assert (built0, built1) == (1, 0) and mapped0 and mapped1
    assert all(same(a, b) for a, b in zip(samples0, samples1))
    cache = os.path.join(os.path.dirname(corpus), "cache")
    assert len([f for f in os.listdir(cache) if "EttinDataset-train" in f]) == 4


@pytest.mark.parametrize("damage", ["no_description", "leftover_temporary", "truncated_array"])
def test_a_killed_build_is_rebuilt(corpus, tmp_path, monkeypatch, damage):
    cache = str(tmp_path / "cache")
    reference = samples(train(config(corpus, layout="packed", path_to_cache=cache), 40))
    files = {f.split("-")[-1]: os.path.join(cache, f) for f in os.listdir(cache)}
    if damage == "leftover_temporary":  # killed while writing the sample index: only its temporary
        os.replace(files["sample_index.npy"], files["sample_index.npy"] + ".1.tmp")
    if damage == "truncated_array":
        with open(files["sample_index.npy"], "r+b") as f:
            f.truncate(100)
    os.remove(files["description.txt"])
    builds = count_builds(monkeypatch)
    rebuilt = train(config(corpus, layout="packed", path_to_cache=cache), 40)
    assert builds == ["train"] and all(same(a, b) for a, b in zip(reference, samples(rebuilt)))
    assert os.path.isfile(files["description.txt"]) and numpy.load(files["sample_index.npy"]).shape[1] == 2


KILLED_WRITER = """
import os, signal, sys
import numpy
from ettin_megatron.data import index_cache
from tests.data.test_datasets import config, train
def half_then_die(file, array, **kwargs):  # dies half-way through writing the sample index
    if array.ndim == 2:
        file.write(array.tobytes()[: array.nbytes // 2])
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    numpy.lib.format.write_array(file, array)
index_cache.numpy.save = half_then_die
if sys.argv[3] == "racing":  # another process completed the cache after this one looked for it
    index_cache.load = lambda *args: None
train(config(sys.argv[1], layout="document", path_to_cache=sys.argv[2]), 40)
"""


@pytest.mark.parametrize("case", ["alone", "racing"])
def test_a_build_killed_mid_write_never_leaves_a_broken_cache(corpus, tmp_path, monkeypatch, case):
    """Killed half-way through writing the sample index: alone, it leaves no description (the next
    build starts over); racing another process that completed the cache, that cache stays intact."""
    cache = str(tmp_path / "cache")
    reference = samples(train(config(corpus, layout="document", path_to_cache=cache), 40)) if case == "racing" else None
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    died = subprocess.run([sys.executable, "-c", KILLED_WRITER, corpus, cache, case], env=env, capture_output=True)
    assert died.returncode == -9, died.stderr.decode()[-2000:]
    builds = count_builds(monkeypatch)
    dataset = train(config(corpus, layout="document", path_to_cache=cache), 40)
    if case == "alone":
        assert builds == ["train"]
    else:
        assert builds == [] and all(same(a, b) for a, b in zip(reference, samples(dataset)))


def test_an_unwritable_cache_location(corpus, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="--data-cache-path .* cannot hold the sample indices"):
        train(config(corpus, path_to_cache=str(blocker / "cache")))
    # Without --data-cache-path, a default location that cannot be written only costs a warning.
    os.replace(corpus + ".bin", str(tmp_path / "docs.bin"))
    os.replace(corpus + ".idx", str(tmp_path / "docs.idx"))
    (tmp_path / "cache").write_text("")  # a file where the default cache directory would go
    dataset = train(config(str(tmp_path / "docs")))
    assert len(dataset) > 0 and not isinstance(dataset.sample_index, numpy.memmap)
    assert "every rank builds its own; pass --data-cache-path" in capsys.readouterr().out
