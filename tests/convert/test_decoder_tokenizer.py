"""An exported decoder's tokenizer frames a prompt as generation expects: [CLS] text, without the
[SEP] that ends training documents (and is the generation EOS), with bos / eos set; the encoder's
tokenizer keeps [CLS] text [SEP]. Then ``generate(**tokenizer(prompt))`` continues the prompt."""

import json
import shutil
import subprocess
import sys

import torch

from ettin_megatron.convert.export_hf import megatron_to_hf
from ettin_megatron.convert.import_hf import hf_to_megatron


def _export(hf_dir, root):
    hf_to_megatron(hf_dir, root / "ckpt")
    return megatron_to_hf(root / "ckpt", root / "hf")


def test_decoder_tokenizer_frames_prompts_and_generate_continues(hf_dirs, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = _export(hf_dirs["causal"], tmp_path / "decoder")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    ids = tokenizer("The quick brown")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and tokenizer.sep_token_id not in ids
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
    model = AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    inputs = tokenizer(["The quick brown"], return_tensors="pt", return_token_type_ids=False)
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == len(ids) + 4 and torch.equal(out[0, : len(ids)], torch.tensor(ids))

    from tools.generate import main

    assert main([str(directory), "The quick brown", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("The quick brown -> ")


def test_encoder_tokenizer_keeps_its_template(hf_dirs, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(_export(hf_dirs["bidirectional"], tmp_path / "encoder")))
    ids = tokenizer("The quick brown")["input_ids"]
    assert (ids[0], ids[-1]) == (tokenizer.cls_token_id, tokenizer.sep_token_id)


def test_an_exported_bpe_tokenizer_loads_without_the_cleanup_warning(hf_dirs, tmp_path):
    """Issue 27, item 11: ModernBERT's tokenizer_config.json says clean_up_tokenization_spaces: true, which
    transformers ignores for a BPE tokenizer with a warning at every load of an export."""
    source = tmp_path / "source"
    shutil.copytree(hf_dirs["bidirectional"], source)
    config = json.loads((source / "tokenizer_config.json").read_text())
    (source / "tokenizer_config.json").write_text(json.dumps({**config, "clean_up_tokenization_spaces": True}))
    directory = _export(source, tmp_path / "encoder")
    assert json.loads((directory / "tokenizer_config.json").read_text())["clean_up_tokenization_spaces"] is False
    load = ("from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(r'%s'); "
            "print(t.decode(t('Hello , world !')['input_ids'], skip_special_tokens=True))" % directory)
    done = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "clean_up_tokenization_spaces" not in done.stderr, done.stderr
    assert done.stdout.strip() == "Hello , world !"  # the spaces a cleanup would have removed are kept
