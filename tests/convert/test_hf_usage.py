"""The exported directories work the way users use them: pipeline("fill-mask"),
SentenceTransformer(dir).encode, and generate(); fill-mask and generate agree with our own model's
logits (EttinModel, loaded from the checkpoint), not only with the exported model."""

import json

import pytest
import torch

from ettin_megatron.convert.export_hf import megatron_to_hf


@pytest.fixture(scope="module")
def checkpoints(parallel_run):
    trained = parallel_run["root"] / "trained"
    return {"bidirectional": trained / "tp2" / "bidirectional", "causal": trained / "pp2" / "causal"}


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    return {"bidirectional": megatron_to_hf(checkpoints["bidirectional"], root / "encoder"),
            "causal": megatron_to_hf(checkpoints["causal"], root / "decoder")}


def our_logits(checkpoint):
    """input_ids [1, s] -> the logits [1, s, vocab] of our EttinModel, loaded from ``checkpoint``."""
    from ettin_megatron.convert.megatron_side import load_megatron_model
    from ettin_megatron.convert.verify import ettin_logits

    model, _ = load_megatron_model(checkpoint)
    return lambda input_ids: ettin_logits(model.eval(), input_ids, torch.ones_like(input_ids))


def test_encoder_fill_mask_pipeline(exported, checkpoints):
    from transformers import AutoTokenizer, pipeline

    text = "The quick brown [MASK] jumps."
    fill = pipeline("fill-mask", model=str(exported["bidirectional"]), device="cpu")
    predictions = fill(text, top_k=3)
    input_ids = AutoTokenizer.from_pretrained(str(exported["bidirectional"]))(text, return_tensors="pt")["input_ids"]
    position = input_ids[0].tolist().index(fill.tokenizer.mask_token_id)
    expected = our_logits(checkpoints["bidirectional"])(input_ids)[0, position].softmax(-1).topk(3)
    assert [p["token"] for p in predictions] == expected.indices.tolist()
    assert torch.allclose(torch.tensor([p["score"] for p in predictions]), expected.values, atol=1e-5)


def test_fill_mask_tool(exported, capsys):
    from tools.fill_mask import main

    assert main([str(exported["bidirectional"]), "The quick brown [MASK] jumps.", "--top-k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main([str(exported["bidirectional"]), "no mask here"]) == 2
    assert main([str(exported["causal"]), "a [MASK]"]) == 2
    assert "not an encoder" in capsys.readouterr().err


def test_generate_tool(exported, capsys, tmp_path):
    from tools.generate import main

    assert main([str(exported["causal"]), "The quick brown", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("The quick brown -> ")
    assert main([str(exported["bidirectional"]), "The quick brown"]) == 2
    assert "is not a decoder" in capsys.readouterr().err
    assert main([str(tmp_path), "The quick brown"]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_sentence_transformers_pooling(exported, attention):
    st = pytest.importorskip("sentence_transformers")
    from transformers import AutoModel, AutoTokenizer

    directory = exported[attention]
    pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] == (attention == "bidirectional")
    assert pooling["pooling_mode_lasttoken"] == (attention == "causal")
    texts = ["The quick brown fox.", "Python library provides functions for working with text and numbers."]
    embeddings = st.SentenceTransformer(str(directory), device="cpu").encode(texts, convert_to_tensor=True)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(str(directory)).eval()(**batch).last_hidden_state
    mask = batch["attention_mask"]
    if attention == "bidirectional":
        expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    else:
        expected = hidden[torch.arange(len(texts)), mask.sum(1) - 1]
    assert embeddings.shape == expected.shape
    assert torch.allclose(embeddings.cpu(), expected, atol=1e-5)


def test_decoder_generate(exported, checkpoints):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    directory = exported["causal"]
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    generation = GenerationConfig.from_pretrained(str(directory))
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (
        tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    prompt = tokenizer(["The quick brown"], return_tensors="pt", add_special_tokens=False)
    prompt_ids = torch.cat([torch.tensor([[tokenizer.cls_token_id]]), prompt["input_ids"]], dim=1)
    out = model.generate(prompt_ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > prompt_ids.shape[1] and torch.equal(out[:, : prompt_ids.shape[1]], prompt_ids)
    # greedy decoding is our model's argmax, token after token (HF stops early at EOS)
    logits, ours = our_logits(checkpoints["causal"]), prompt_ids
    while ours.shape[1] < out.shape[1]:
        ours = torch.cat([ours, logits(ours)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ours)
    with torch.no_grad():  # and the exported model's logits along the way are ours (argmax alone is coarse)
        torch.testing.assert_close(model(out).logits, logits(out), atol=1e-4, rtol=1e-4)


def test_mntp_encoder_is_labelled_and_fill_mask_reads_the_position_before_the_mask(hf_dirs, tmp_path):
    """An MNTP encoder's output at i predicts token i + 1 (LLM2Vec). The label goes checkpoint -> config.json
    -> checkpoint, and fill-mask scores the mask with our own model's logits one position earlier."""
    from transformers import AutoTokenizer

    from ettin_megatron.convert.import_hf import hf_to_megatron
    from ettin_megatron.convert.megatron_side import load_megatron_model
    from ettin_megatron.convert.verify import ettin_logits
    from tools.fill_mask import fill_mask

    checkpoint = hf_to_megatron(hf_dirs["bidirectional"], tmp_path / "ckpt")
    description = json.loads((checkpoint / "ettin_config.json").read_text())
    assert description["training_objective"] == "mlm"
    description["training_objective"] = "mntp"  # what a --objective mntp run records (test_checkpointing)
    (checkpoint / "ettin_config.json").write_text(json.dumps(description))
    directory = megatron_to_hf(checkpoint, tmp_path / "hf")
    assert json.loads((directory / "config.json").read_text())["ettin_training_objective"] == "mntp"
    assert "ettin_training_objective" not in json.loads(
        (megatron_to_hf(checkpoint, tmp_path / "as_decoder", attention="causal") / "config.json").read_text())
    reimported = hf_to_megatron(directory, tmp_path / "again")
    assert json.loads((reimported / "ettin_config.json").read_text())["training_objective"] == "mntp"

    text = "The quick brown [MASK] jumps."
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    batch = tokenizer(text, return_tensors="pt")
    position = batch["input_ids"][0].tolist().index(tokenizer.mask_token_id)
    model, _ = load_megatron_model(checkpoint)
    probs = ettin_logits(model.eval(), batch["input_ids"], batch["attention_mask"])[0, position - 1].softmax(-1)
    expected = probs.topk(3)
    predictions = fill_mask(str(directory), text, top_k=3)
    assert [p["token"] for p in predictions] == expected.indices.tolist()
    assert torch.allclose(torch.tensor([p["score"] for p in predictions]), expected.values, atol=1e-5)
