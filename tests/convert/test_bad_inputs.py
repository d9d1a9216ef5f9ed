"""Each bad input is refused in one line (exit 2) before any heavy work, and nothing is unpickled."""

import enum
import json
import os
import pickle
import shutil

import pytest
import torch

from tools.convert_checkpoint import main


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def expect_error(capsys, fragment, *argv):
    code, err = run(capsys, *argv)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert fragment in err, err


@pytest.fixture(scope="module")
def checkpoint(hf_dirs, tmp_path_factory):
    """A small encoder checkpoint made by hf-to-megatron (with its tokenizer)."""
    from ettin_megatron.convert.import_hf import hf_to_megatron

    root = tmp_path_factory.mktemp("bad") / "ckpt"
    hf_to_megatron(hf_dirs["bidirectional"], root)
    return root


def copy_checkpoint(checkpoint, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(checkpoint, target)
    return target, target / "iter_0000000"


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    path.write_text(json.dumps(data))


def test_not_a_checkpoint(capsys, tmp_path):
    expect_error(capsys, "does not exist", "megatron-to-hf", "--load", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    expect_error(capsys, "not an ettin-megatron checkpoint", "megatron-to-hf", "--load", str(tmp_path), "--output", str(tmp_path / "o"))
    (tmp_path / "iter_0000000").mkdir()
    (tmp_path / "iter_0000000" / "ettin_config.json").write_text(json.dumps({"model": {"attention": "bidirectional"}, "tokenizer": None}))
    expect_error(capsys, "no tokenizer", "megatron-to-hf", "--load", str(tmp_path / "iter_0000000"), "--output", str(tmp_path / "o"))


def test_not_a_dist_checkpoint(capsys, checkpoint, tmp_path):
    root, iteration = copy_checkpoint(checkpoint, tmp_path)
    for name in os.listdir(iteration):
        if name != "ettin_config.json":
            os.remove(iteration / name)
    expect_error(capsys, "not a readable dist checkpoint", "megatron-to-hf", "--load", str(root), "--output", str(tmp_path / "o"))


def test_unknown_model_type(capsys, hf_dirs, tmp_path):
    directory = tmp_path / "hf"
    shutil.copytree(hf_dirs["bidirectional"], directory)
    edit_json(directory / "config.json", model_type="bert")
    expect_error(capsys, "unknown model type 'bert'", "hf-to-megatron", "--hf-dir", str(directory), "--save", str(tmp_path / "c"))
    expect_error(capsys, "no config.json", "hf-to-megatron", "--hf-dir", str(tmp_path), "--save", str(tmp_path / "c"))


def test_shape_mismatch(capsys, checkpoint, hf_dirs, tmp_path):
    directory = tmp_path / "hf"
    shutil.copytree(hf_dirs["causal"], directory)
    edit_json(directory / "config.json", intermediate_size=256)
    expect_error(capsys, "shape mismatch: model.layers.0.mlp.Wi.weight", "hf-to-megatron", "--hf-dir", str(directory),
                 "--save", str(tmp_path / "c"))
    root, iteration = copy_checkpoint(checkpoint, tmp_path)
    edit_json(iteration / "ettin_config.json", **{"model.hidden_size": 256, "model.ffn_hidden_size": 384})
    expect_error(capsys, "shape mismatch", "megatron-to-hf", "--load", str(root), "--output", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.tmp").exists()


@pytest.mark.parametrize("attention, change, fragment", [
    ("bidirectional", {"hidden_activation": "silu"}, "hidden_activation = 'silu'"),
    ("causal", {"hidden_activation": "gelu_pytorch_tanh"}, "hidden_activation = 'gelu_pytorch_tanh'"),
    ("bidirectional", {"classifier_activation": "relu"}, "classifier_activation = 'relu'"),
    ("causal", {"classifier_activation": "tanh"}, "classifier_activation = 'tanh'"),
    ("bidirectional", {"mlp_bias": True}, "mlp_bias = True"),
    ("bidirectional", {"decoder_bias": False}, "decoder_bias = False"),
    ("bidirectional", {"tie_word_embeddings": False}, "tie_word_embeddings = False"),
    ("causal", {"rope_parameters.full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
     "full_attention rope_type 'linear'"),
])
def test_forward_changing_config_fields_are_refused(capsys, hf_dirs, tmp_path, attention, change, fragment):
    """A field the Ettin model does not implement would import silently as a different model."""
    directory = tmp_path / "hf"
    shutil.copytree(hf_dirs[attention], directory)
    edit_json(directory / "config.json", **change)
    expect_error(capsys, fragment, "hf-to-megatron", "--hf-dir", str(directory), "--save", str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()


def test_vocab_mismatch(capsys, checkpoint, hf_dirs, tmp_path):
    directory = tmp_path / "hf"
    shutil.copytree(hf_dirs["bidirectional"], directory)
    edit_json(directory / "config.json", vocab_size=320)
    expect_error(capsys, "vocabulary mismatch", "hf-to-megatron", "--hf-dir", str(directory), "--save", str(tmp_path / "c"))
    root, iteration = copy_checkpoint(checkpoint, tmp_path)
    edit_json(iteration / "ettin_config.json", **{"model.vocab_size": 320})
    expect_error(capsys, "vocabulary mismatch", "megatron-to-hf", "--load", str(root), "--output", str(tmp_path / "o"))


def test_pickle_weights_are_refused(capsys, hf_dirs, tmp_path):
    directory = tmp_path / "hf"
    shutil.copytree(hf_dirs["bidirectional"], directory)
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    expect_error(capsys, "pytorch_model.bin (pickle)", "hf-to-megatron", "--hf-dir", str(directory), "--save", str(tmp_path / "c"))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_metadata_is_never_unpickled(capsys, checkpoint, tmp_path):
    root, iteration = copy_checkpoint(checkpoint, tmp_path)
    marker = tmp_path / "pwned"
    (iteration / ".metadata").write_bytes(pickle.dumps(_Exploit(marker)))
    expect_error(capsys, "refusing to load it", "megatron-to-hf", "--load", str(root), "--output", str(tmp_path / "o"))
    assert not marker.exists()


class _EnumsByGetattr(pickle.Pickler):
    """Pickles enum members as getattr(EnumClass, name), as Python 3.11.2 and 3.12+ do."""

    def reducer_override(self, obj):
        if isinstance(obj, enum.Enum):
            return getattr, (type(obj), obj.name)
        return NotImplemented


def test_metadata_with_enums_pickled_by_getattr_loads(capsys, checkpoint, tmp_path):
    root, iteration = copy_checkpoint(checkpoint, tmp_path)
    metadata = pickle.loads((iteration / ".metadata").read_bytes())  # our own checkpoint: trusted
    with open(iteration / ".metadata", "wb") as f:
        _EnumsByGetattr(f).dump(metadata)
    assert b"getattr" in (iteration / ".metadata").read_bytes()
    code, err = run(capsys, "megatron-to-hf", "--load", str(root), "--output", str(tmp_path / "o"))
    assert code == 0, err


class _GetattrExploit:
    def __reduce__(self):  # a step towards __globals__ and os.system
        return (getattr, (torch.Size, "__init__"))


def test_metadata_getattr_on_anything_but_an_enum_is_refused(capsys, checkpoint, tmp_path):
    root, iteration = copy_checkpoint(checkpoint, tmp_path)
    (iteration / ".metadata").write_bytes(pickle.dumps(_GetattrExploit()))
    expect_error(capsys, "getattr(<class 'torch.Size'>, '__init__') is not allowed", "megatron-to-hf",
                 "--load", str(root), "--output", str(tmp_path / "o"))


class _TamperedEnum:
    def __reduce__(self):  # the enum member, then new state for it: a changed value for the process
        from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING

        return (getattr, (_MEM_FORMAT_ENCODING, "TORCH_CONTIGUOUS_FORMAT"), {"_value_": 99})


# GLOBAL Metadata, EMPTY_DICT, "tampered": 7, SETITEM, BUILD: a class attribute set by the file.
_TAMPERED_CLASS = (b"\x80\x02ctorch.distributed.checkpoint.metadata\nMetadata\n}X\x08\x00\x00\x00tampered"
                   b"K\x07sb.")


@pytest.mark.parametrize("payload", ["enum", "class"])
def test_metadata_that_sets_state_on_classes_or_enums_is_refused(capsys, checkpoint, tmp_path, payload):
    from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING, Metadata

    value = _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT.value
    root, iteration = copy_checkpoint(checkpoint, tmp_path)
    data = pickle.dumps(_TamperedEnum()) if payload == "enum" else _TAMPERED_CLASS
    (iteration / ".metadata").write_bytes(data)
    expect_error(capsys, "is not allowed in checkpoint metadata", "megatron-to-hf", "--load", str(root),
                 "--output", str(tmp_path / "o"))
    assert _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT.value == value and not hasattr(Metadata, "tampered")


def test_outputs_are_never_clobbered(capsys, checkpoint, hf_dirs, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    expect_error(capsys, "neither empty nor a Hugging Face model directory", "megatron-to-hf", "--load", str(checkpoint),
                 "--output", str(tmp_path / "busy"))
    expect_error(capsys, "not an empty directory", "hf-to-megatron", "--hf-dir", str(hf_dirs["bidirectional"]), "--save", str(checkpoint))
    expect_error(capsys, "not divisible by tensor parallel size 3", "hf-to-megatron", "--hf-dir", str(hf_dirs["bidirectional"]),
                 "--save", str(tmp_path / "c"), "--target-tensor-parallel-size", "3")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def _remove(path):
    path.unlink()


def _cut_short(path):
    path.write_bytes(path.read_bytes()[:1000])


def _overwrite_start(path):
    data = path.read_bytes()
    path.write_bytes(b"\xff" * 4000 + data[4000:])


@pytest.mark.parametrize("damage, message", [
    (_remove, "error: {file} is missing (the checkpoint's .metadata lists it); copy the checkpoint again, all its "
              "files."),
    (_cut_short, "error: {file} holds 1000 bytes but the checkpoint's .metadata needs {size}: it was cut short; copy "
                 "the checkpoint again."),
    (_overwrite_start, "error: loading {iteration} failed (UnpicklingError: invalid load key, '\\xff'.)."),
], ids=("missing", "cut_short", "overwritten"))
def test_a_damaged_data_file_is_one_line_and_keeps_the_earlier_export(capsys, checkpoint, tmp_path, damage, message):
    """torch reports these as a CheckpointException (a BaseException, a traceback per rank); a missing or
    short file is found from the index before the model is built, and the earlier export stays."""
    root, iteration = copy_checkpoint(checkpoint, tmp_path)
    file = sorted(iteration.glob("*.distcp"))[0]
    size = file.stat().st_size
    damage(file)
    earlier = tmp_path / "hf"
    earlier.mkdir()
    (earlier / "config.json").write_text("{}")
    code, err = run(capsys, "megatron-to-hf", "--load", str(root), "--output", str(earlier))
    assert code == 2 and err == message.format(file=file, size=size, iteration=iteration), err
    assert os.listdir(earlier) == ["config.json"] and (earlier / "config.json").read_text() == "{}"
    assert not (tmp_path / "hf.tmp").exists()


@pytest.mark.parametrize("command, flag", [("megatron-to-hf", "--output"), ("hf-to-megatron", "--save")])
def test_an_unwritable_output_location_is_one_line(capsys, checkpoint, hf_dirs, unwritable, command, flag):
    """Refused before the model is built (hf-to-megatron used to fail only when saving it)."""
    location, refused = unwritable
    source = ["--load", str(checkpoint)] if command == "megatron-to-hf" else ["--hf-dir", str(hf_dirs["bidirectional"])]
    code, err = run(capsys, command, *source, flag, os.path.join(location, "out"))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {flag}: cannot write in {refused} ("), err
    assert err.endswith("); choose a writable location"), err
