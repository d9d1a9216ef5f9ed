"""Model quality per data layout: held-out loss of the tiny encoder (MLM) and decoder (CLM) trained with
each ``--data-layout`` and with a plain transformers training loop, all on the same tokens.

What is compared (issue 9's acceptance: the default layout within 0.05 nats of the transformers
reference or better, and within 0.05 nats of ``packed``):

- Corpus: the offline sample corpus (``build_sample_corpus``). Every 50th document (index % 50 == 0,
  2%) is held out: no tokenizer, training run or reference ever sees it. The other 98% are the
  training documents. Tokenizer: a 4096-token BPE trained on the training documents by the project's
  helper (as the demo), or ``--tokenizer DIR`` (e.g. ../shared/tokenizers/modernbert). Both files go
  through tools/preprocess_data.py, so every run and the evaluator read the same framed
  ([CLS] ... [SEP]) token ids.
- Hyper-parameters: the demo's (examples/pretrain_ettin_common.sh): tiny model, seq 128, micro batch
  16, global batch 32, AdamW lr 3e-3 (betas 0.9/0.98, eps 1e-6, weight decay 0.01 on matrices only,
  grad clip 1.0), 10 warm-up steps, WSD with a 1-sqrt anneal to 3e-4 over the last 30% + 1 steps,
  MLM masking rate 0.3, fp32, seed 21.
- Token budget: every run trains on the same number of input tokens, ``--train-tokens`` (default
  3,686,400 = 900 steps x 32 x 128, ~9 epochs of the training documents: three times the demo's 300
  steps, so that every MLM run has left its unigram plateau, see Seeds). A ``document``
  sample can be shorter than seq_length (a document's last chunk), so the number of steps differs per
  layout: before training, the benchmark builds each layout's training dataset exactly as pretrain
  does and counts the input tokens of its first samples, and takes the fewest whole steps whose
  samples hold at least the budget (the overshoot is under one step; the table shows the tokens).
  The LR schedule has the same shape in every run (warm-up 10 steps, anneal over the last 30% + 1).
- Ours: ``python -m torch.distributed.run --nproc-per-node 1 -m ettin_megatron.pretrain`` with
  ``--data-layout document | packed | concat``, then exported to Hugging Face with tools/convert_checkpoint.py.
- Reference: ModernBertForMaskedLM / ModernBertDecoderForCausalLM built from the same EttinConfig
  (hf_config), transformers' own initialisation, trained by a plain PyTorch loop: the training
  documents concatenated in order and cut into 128-token blocks (the remainder dropped), as
  run_mlm.py / run_clm.py's group_texts; blocks in a fresh seeded random order each epoch; MLM
  labels from the project's mlm_mask (30%, 80/10/10, ordinary tokens only: what
  DataCollatorForLanguageModeling does, with the same special-token rule as ours); CLM labels are
  the next token in the block. torch.optim.AdamW with the same betas, eps and decay groups; LR from
  the same Megatron scheduler (training/optimizer.build_scheduler) advanced by 32 samples per step.
- One evaluator: every model is loaded as the transformers class in fp32 (eager attention) and
  scores each held-out document cut into consecutive pieces of 128 tokens (the last one shorter);
  MLM: 15% of ordinary tokens chosen by mlm_mask, ``EVAL_MASKS`` (8) times per piece from generators
  seeded by the piece and draw numbers, so every model sees identical masks (one draw alone moved a
  model's score by ~0.2 nats: ~1,100 masked tokens); CLM: the next token within the piece. Reported:
  mean loss per labelled token (nats).
- Seeds: a 1M-parameter MLM sits on a unigram plateau (~6.3 nats) for a variable number of steps
  (100-400) before it learns to use context, so after the demo's 300 steps one run per contender
  could differ by more than 0.5 nats with nothing changed but the seed: that budget compared plateau
  timing, not layouts. ``--seeds`` repeats every training run with each seed (weights and data order;
  the evaluator's masks never change) and the table compares the means.

    python benchmarks/model_quality.py                # one seed, every run (~8 runs)
    python benchmarks/model_quality.py --seeds 21 22 23 --json rows.json   # rows.json keeps finished runs
    python benchmarks/model_quality.py --quick        # smoke test: 4 steps' worth of tokens
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy
import torch

REPO = Path(__file__).resolve().parents[1]
SEQ, MICRO, GLOBAL, LR, MIN_LR, WD, WARMUP = 128, 16, 32, 3e-3, 3e-4, 0.01, 10
SEED, HOLDOUT_EVERY, EVAL_MASK_RATE = 21, 50, 0.15  # SEED: the evaluator's masks; training seeds: --seeds
EVAL_MASKS = 8  # MLM masks per held-out piece: ~9,000 scored positions instead of ~1,100
LAYOUTS = ("document", "packed", "concat")


def sh(*cmd: str, log: Path | None = None) -> None:
    """Run a command with this interpreter's environment; keep its output in ``log``."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(log or os.devnull, "w") as out:
        done = subprocess.run(list(cmd), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = Path(log).read_text()[-3000:] if log else ""
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{tail}")


def prepare(work: Path, tokenizer: str | None) -> tuple[str, str, str]:
    """Corpus split into training / held-out documents, tokenizer, and both preprocessed."""
    from ettin_megatron.data.sample_corpus import build_sample_corpus
    from ettin_megatron.data.train_tokenizer import train_tokenizer

    data = work / "data"
    if not (data / "heldout_text_document.idx").exists():
        data.mkdir(parents=True, exist_ok=True)
        build_sample_corpus(str(work / "corpus.jsonl"))
        lines = (work / "corpus.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (work / "train.jsonl").write_text("".join(l for i, l in enumerate(lines) if i % HOLDOUT_EVERY), "utf-8")
        (work / "heldout.jsonl").write_text("".join(lines[::HOLDOUT_EVERY]), "utf-8")
        if tokenizer is None:
            train_tokenizer([str(work / "train.jsonl")], str(work / "tokenizer"), vocab_size=4096)
        tok = tokenizer or str(work / "tokenizer")
        for name in ("train", "heldout"):
            sh(sys.executable, "tools/preprocess_data.py", "--input", str(work / f"{name}.jsonl"),
               "--output-prefix", str(data / name), "--tokenizer-model", tok, "--workers", "1",
               log=work / f"preprocess_{name}.log")
    return str(data / "train_text_document"), str(data / "heldout_text_document"), tokenizer or str(work / "tokenizer")


def pretrain_flags(objective: str, layout: str, iters: int, prefix: str, tokenizer: str, seed: int = SEED) -> list[str]:
    """The demo's flags (examples/pretrain_ettin_common.sh) for a run of ``iters`` steps."""
    return ["--objective", objective, "--model-size", "tiny", "--no-bf16", "--data-path", prefix,
            "--split", "100,0,0", "--data-layout", layout, "--tokenizer-model", tokenizer,
            "--seq-length", str(SEQ), "--micro-batch-size", str(MICRO), "--global-batch-size", str(GLOBAL),
            "--train-iters", str(iters), "--lr", str(LR), "--lr-warmup-iters", str(WARMUP),
            "--weight-decay", str(WD), "--lr-decay-style", "WSD", "--lr-wsd-decay-style", "minus_sqrt",
            "--min-lr", str(MIN_LR), "--lr-wsd-decay-iters", str(iters * 3 // 10 + 1),
            "--attention-output-dropout", "0.0", "--log-interval", "10", "--eval-iters", "0",
            "--seed", str(seed)]


def steps_for_budget(objective: str, layout: str, budget: int, prefix: str, tokenizer: str, seed: int) -> tuple[int, int]:
    """(steps, input tokens) of the fewest whole steps of ``layout`` that hold ``budget`` tokens,
    counted on the training samples pretrain will read, in its order."""
    from ettin_megatron.training import batching
    from ettin_megatron.training.arguments import parse_args

    args = parse_args(pretrain_flags(objective, layout, 1, prefix, tokenizer, seed))
    special, _ = batching.token_ids(args)
    train, _ = batching.run_datasets(args, budget // 16, 0, special)
    tokens = 0
    for i in range(len(train)):
        tokens += len(train[i]["tokens"])
        if tokens >= budget and (i + 1) % GLOBAL == 0:
            return (i + 1) // GLOBAL, tokens
    raise SystemExit(f"{layout}: {len(train)} samples hold only {tokens} tokens; raise the sample estimate")


def train_ours(objective: str, layout: str, iters: int, prefix: str, tokenizer: str, work: Path, seed: int) -> Path:
    """Train with pretrain, export to Hugging Face; the HF directory."""
    from ettin_megatron.runtime.distributed import free_port

    name = f"{objective}_{layout}_s{seed}"
    run = work / name
    shutil.rmtree(run, ignore_errors=True)  # a run of another budget: pretrain refuses a used --save
    sh(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
       "--master-port", str(free_port()),  # several benchmarks may run side by side
       "-m", "ettin_megatron.pretrain", *pretrain_flags(objective, layout, iters, prefix, tokenizer, seed),
       "--save", str(run / "ckpt"), log=work / f"{name}.log")
    sh(sys.executable, "tools/convert_checkpoint.py", "megatron-to-hf", "--load", str(run / "ckpt"),
       "--output", str(run / "hf"), log=work / f"{name}_export.log")
    return run / "hf"


def masking(tokenizer: str, rate: float):
    """The project's MLM masking for ``tokenizer`` at ``rate`` (ordinary tokens only, 80/10/10)."""
    from ettin_megatron.data.objectives import Masking, ordinary_token_ids
    from ettin_megatron.data.tokenizer import load_tokenizer, ordinary_ids, special_ids

    tok = load_tokenizer(tokenizer)
    num_ordinary, extra = ordinary_ids(tok)
    return Masking(rate, special_ids(tok).mask, ordinary_token_ids(num_ordinary, extra))


def documents(prefix: str) -> list[numpy.ndarray]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix, multimodal=False)
    return [numpy.asarray(dataset[i], dtype=numpy.int64) for i in range(len(dataset))]


def targets(objective: str, block: numpy.ndarray, mask, rng) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels with -100 where unlabelled) of one block / piece."""
    from ettin_megatron.data.objectives import apply_objective

    sample = apply_objective(objective, block, [len(block)], mask, rng)
    labels = numpy.where(sample["loss_mask"] > 0, sample["labels"], -100)
    return torch.from_numpy(sample["tokens"]), torch.from_numpy(labels)


def train_reference(objective: str, iters: int, prefix: str, tokenizer: str, work: Path, device: str,
                    seed: int) -> Path:
    """The plain transformers loop (see the module docstring); the saved HF directory."""
    from ettin_megatron.convert.hf_mapping import hf_config
    from ettin_megatron.convert.verify import hf_model_class
    from ettin_megatron.training import batching
    from ettin_megatron.training.arguments import parse_args
    from ettin_megatron.training.optimizer import build_scheduler
    from ettin_megatron.training.setup import build_model_config

    args = parse_args(pretrain_flags(objective, "concat", iters, prefix, tokenizer, seed))
    special, vocab = batching.token_ids(args)
    torch.manual_seed(seed)
    config = hf_config(build_model_config(args, vocab_size=vocab), special)
    model = hf_model_class(objective)(config).to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "wd_mult": 0.0}],
                                  lr=LR, betas=(args.optim.adam_beta1, args.optim.adam_beta2),
                                  eps=args.optim.adam_eps, weight_decay=WD)
    scheduler = build_scheduler(args, optimizer)
    stream = numpy.concatenate(documents(prefix))
    blocks = stream[: len(stream) // SEQ * SEQ].reshape(-1, SEQ)
    mask = masking(tokenizer, args.data.mask_rate)
    order, step = [], 0
    while step < iters:
        batch = []
        while len(batch) < GLOBAL:
            if not order:
                order = list(numpy.random.default_rng((seed, step)).permutation(len(blocks)))
            index = order.pop()
            batch.append(targets(objective, blocks[index], mask, numpy.random.default_rng((seed, step, index))))
        inputs = torch.stack([b[0] for b in batch]).to(device)
        labels = torch.stack([b[1] for b in batch]).to(device)
        logits = model(input_ids=inputs).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.optim.clip_grad)
        optimizer.step()
        scheduler.step(increment=GLOBAL)
        step += 1
    out = work / f"{objective}_reference_s{seed}" / "hf"
    model.save_pretrained(out)
    return out


@torch.no_grad()
def evaluate(hf_dir: Path, objective: str, heldout: list[numpy.ndarray], tokenizer: str, device: str) -> float:
    """Mean loss per labelled token on the held-out pieces (identical inputs and masks for every model;
    MLM: ``EVAL_MASKS`` masks of each piece, so that which tokens one draw happens to hide moves the
    score less)."""
    from ettin_megatron.convert.verify import load_hf_model

    model = load_hf_model(hf_dir, objective).to(device)
    mask = masking(tokenizer, EVAL_MASK_RATE)
    total, count, piece = 0.0, 0, 0
    for document in heldout:
        for start in range(0, len(document), SEQ):
            for draw in range(EVAL_MASKS if objective == "mlm" else 1):
                inputs, labels = targets(objective, document[start:start + SEQ], mask,
                                         numpy.random.default_rng((SEED, piece, draw)))
                if (labels >= 0).sum() == 0:
                    continue
                logits = model(input_ids=inputs[None].to(device)).logits[0].float()
                total += torch.nn.functional.cross_entropy(logits, labels.to(device), reduction="sum").item()
                count += int((labels >= 0).sum())
            piece += 1
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default="runs/model_quality")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: train one on the corpus)")
    parser.add_argument("--train-tokens", type=int, default=900 * GLOBAL * SEQ)
    parser.add_argument("--objectives", nargs="+", default=["mlm", "clm"], choices=["mlm", "clm"])
    parser.add_argument("--runs", nargs="+", default=["transformers", *LAYOUTS], choices=["transformers", *LAYOUTS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[SEED],
                        help="training seeds (weights and data order); the table shows each run's mean")
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 steps' worth of tokens")
    parser.add_argument("--json", default=None,
                        help="rows file: rows already in it are kept and not measured again, new ones added")
    opts = parser.parse_args()
    if opts.quick:
        opts.train_tokens = 4 * GLOBAL * SEQ
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(opts.work_dir).resolve()
    start = time.time()
    train_prefix, heldout_prefix, tokenizer = prepare(work, opts.tokenizer)
    heldout = documents(heldout_prefix)
    print(f"held-out: {len(heldout)} documents, {sum(map(len, heldout)):,} tokens; budget "
          f"{opts.train_tokens:,} training tokens per run; device {device}", flush=True)
    rows = json.loads(Path(opts.json).read_text()) if opts.json and Path(opts.json).exists() else []
    for objective in opts.objectives:
        for seed in opts.seeds:
            for name in opts.runs:
                if any((r["objective"], r["run"], r["seed"], r["budget"]) == (objective, name, seed, opts.train_tokens)
                       for r in rows):
                    continue
                t0 = time.time()
                if name == "transformers":
                    steps = math.ceil(opts.train_tokens / (GLOBAL * SEQ))
                    tokens = steps * GLOBAL * SEQ
                    hf_dir = train_reference(objective, steps, train_prefix, tokenizer, work, device, seed)
                else:
                    steps, tokens = steps_for_budget(objective, name, opts.train_tokens, train_prefix, tokenizer, seed)
                    hf_dir = train_ours(objective, name, steps, train_prefix, tokenizer, work, seed)
                loss = evaluate(hf_dir, objective, heldout, tokenizer, device)
                rows.append({"objective": objective, "run": name, "seed": seed, "budget": opts.train_tokens,
                             "steps": steps, "tokens": tokens, "heldout_loss": loss, "seconds": round(time.time() - t0)})
                print(json.dumps(rows[-1]), flush=True)
                if opts.json:
                    Path(opts.json).write_text(json.dumps(rows, indent=1))
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cpus, {device}, torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.1f}; total {time.time() - start:.0f} s\n")
    print(table(rows, opts.train_tokens))


def table(rows: list[dict], budget: int) -> str:
    """Markdown: each (objective, run)'s mean held-out loss over its seeds, and the gaps between means
    with their standard error (the runs' seed-to-seed spread, sqrt(s1^2/n1 + s2^2/n2); "-" with one
    seed), so that a gap can be read against the noise of training a tiny model."""
    losses: dict[tuple[str, str], numpy.ndarray] = {}
    for r in rows:
        if r["budget"] == budget:
            key = (r["objective"], r["run"])
            losses[key] = numpy.append(losses.get(key, []), r["heldout_loss"])
    variance = lambda x: numpy.var(x, ddof=1) / len(x) if len(x) > 1 else numpy.nan  # of the mean
    lines = ["| objective | run | seeds | held-out loss per seed (nats) | mean | std | vs transformers | vs packed |",
             "|---|---|---|---|---|---|---|---|"]
    for (objective, run), x in losses.items():
        std = f"{numpy.std(x, ddof=1):.3f}" if len(x) > 1 else "-"
        gaps = []
        for ref in ("transformers", "packed"):
            y = losses.get((objective, ref))
            if y is None or ref == run:
                gaps.append("-" if y is None else "0")
                continue
            error = numpy.sqrt(variance(x) + variance(y))
            gaps.append(f"{x.mean() - y.mean():+.3f}" + ("" if numpy.isnan(error) else f" ± {error:.3f}"))
        lines.append(f"| {objective} | {run} | {len(x)} | {' '.join(f'{v:.3f}' for v in x)} | {x.mean():.4f} | {std} | "
                     + " | ".join(gaps) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
