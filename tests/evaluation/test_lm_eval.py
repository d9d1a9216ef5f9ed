"""An exported decoder under lm-evaluation-harness as Ettin ran it (``--model hf``,
``add_bos_token=True``), on a task defined in a YAML file over a local JSON Lines file
(data/ettin_topics.yaml), fully offline: the hub is never asked, and nothing is downloaded.

The command is the one the README gives, run as users run it. What it reports is checked against the
exported model's own log-likelihoods, computed here with transformers: every (context, choice) score it
logged equals the sum of log-probabilities of the choice's tokens after [CLS] (the decoder's BOS) and the
context, which also shows that add_bos_token=True took effect (without the BOS the scores differ)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .topics import train_and_export, write_topic_corpus

DATA = Path(__file__).parent / "data"
TASK = "ettin_topics"
TOLERANCE = 1e-4  # |lm-eval's score - ours| in nats: float32, batched by lm-eval, one sequence at a time here


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """A tiny decoder trained 100 CLM steps on the topic corpus, exported to a HF folder."""
    root = tmp_path_factory.mktemp("decoder")
    return train_and_export(write_topic_corpus(root), root, "clm", 100)


@pytest.fixture(scope="module")
def lm_eval_run(decoder, tmp_path_factory):
    """(logged samples, results) of ``lm_eval --model hf ... --log_samples`` on the local task, run from
    the task's data directory with the hub and `datasets` offline and every cache in a fresh directory."""
    out = tmp_path_factory.mktemp("lm_eval")
    offline = {name: "1" for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env = {**os.environ, **offline, "HF_HOME": str(out / "hf_home"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lm_eval", "--model", "hf",
               "--model_args", f"pretrained={decoder},dtype=float32,add_bos_token=True", "--device", "cpu",
               "--include_path", str(DATA), "--tasks", TASK, "--output_path", str(out / "results"), "--log_samples"]
    done = subprocess.run(command, cwd=DATA, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    [samples] = (out / "results").rglob(f"samples_{TASK}_*.jsonl")
    [results] = (out / "results").rglob("results_*.json")
    return [json.loads(line) for line in samples.read_text().splitlines()], json.loads(results.read_text())


@pytest.fixture(scope="module")
def transformers_decoder(decoder):
    """(tokenizer, model) of the exported folder, loaded with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(decoder)), AutoModelForCausalLM.from_pretrained(str(decoder)).eval()


def choice_loglikelihoods(transformers_decoder, context: str, choices: list[str], bos: bool) -> torch.Tensor:
    """log p(" " + choice | [CLS]? context) of each choice, summed over the choice's tokens."""
    tokenizer, model = transformers_decoder
    prefix = [tokenizer.cls_token_id] * bos + tokenizer(context, add_special_tokens=False)["input_ids"]
    scores = []
    for choice in choices:
        ids = torch.tensor([prefix + tokenizer(" " + choice, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logprobs = model(ids).logits[0, :-1].log_softmax(-1)
        positions = torch.arange(len(prefix) - 1, ids.shape[1] - 1)  # each position predicts the next token
        scores.append(logprobs[positions, ids[0, positions + 1]].sum())
    return torch.stack(scores)


def test_the_exported_tokenizer_prepends_cls_as_its_bos(transformers_decoder):
    """What add_bos_token=True asks of the tokenizer (lm-eval encodes with add_special_tokens=True)."""
    tokenizer, _ = transformers_decoder
    assert tokenizer.bos_token_id == tokenizer.cls_token_id
    assert tokenizer("t1 t2")["input_ids"] == [tokenizer.cls_token_id, 1, 2]
    assert tokenizer("t1 t2", add_special_tokens=False)["input_ids"] == [1, 2]


def test_lm_eval_scores_are_the_exported_models_loglikelihoods_after_bos(transformers_decoder, lm_eval_run):
    samples, results = lm_eval_run
    documents = [json.loads(line) for line in (DATA / f"{TASK}.jsonl").read_text().splitlines()]
    assert sorted(s["doc_id"] for s in samples) == list(range(len(documents)))
    correct = 0
    for sample in samples:
        document = documents[sample["doc_id"]]
        assert sample["doc"] == document
        logged = torch.tensor([float(score) for [[score, _greedy]] in sample["resps"]])
        with_bos = choice_loglikelihoods(transformers_decoder, document["context"], document["choices"], bos=True)
        torch.testing.assert_close(logged, with_bos, atol=TOLERANCE, rtol=0)
        without_bos = choice_loglikelihoods(transformers_decoder, document["context"], document["choices"], bos=False)
        assert (logged - without_bos).abs().max() > 10 * TOLERANCE  # measured: 0.013 to 0.079 apart
        correct += int(with_bos.argmax()) == document["answer"]
    assert results["results"][TASK]["acc,none"] == pytest.approx(correct / len(documents))
    # 100 steps on the topic corpus teach the decoder which words go together: it picks every topic
    assert correct == len(documents)
