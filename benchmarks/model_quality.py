"""Model quality per data layout: held-out loss of the tiny encoder (MLM) and decoder (CLM) trained with
each ``--data-layout`` and with a plain transformers training loop, all on the same tokens.

What is compared (the acceptance of the default layout: within 0.05 nats of the transformers reference
or better, and within 0.05 nats of ``packed``):

- Corpus: the offline sample corpus (``build_sample_corpus``). Every 50th document (index % 50 == 0,
  2%) is held out: no tokenizer, training run or reference ever sees it. The other 98% are the
  training documents. Tokenizer: a 4096-token BPE trained on the training documents by the project's
  helper (as the demo), or ``--tokenizer DIR`` (e.g. the ModernBERT tokenizer's directory). Both files go
  through tools/preprocess_data.py, so every run and the evaluator read the same framed
  ([CLS] ... [SEP]) token ids.
- Hyper-parameters: the demo's (examples/pretrain_ettin_common.sh): tiny model, seq 128, micro batch
  16, global batch 32, AdamW lr 3e-3 (betas 0.9/0.98, eps 1e-6, weight decay 0.01 on matrices only,
  grad clip 1.0), WSD with a 1-sqrt anneal to 3e-4 over the last 30% + 1 steps, MLM masking rate
  0.3, fp32, seed 21; but 100 LR warm-up steps, not the demo's 10 (``--warmup-steps``; see Seeds).
- Token budget: every run trains on the same number of input tokens, ``--train-tokens`` (default
  3,686,400 = 900 steps x 32 x 128, ~9 epochs of the training documents: three times the demo's 300
  steps, so that every MLM run has left its unigram plateau, see Seeds). A ``document``
  sample can be shorter than seq_length (a document's last chunk), so the number of steps differs per
  layout: before training, the benchmark builds each layout's training dataset exactly as pretrain
  does and counts the input tokens of its first samples, and takes the fewest whole steps whose
  samples hold at least the budget (the overshoot is under one step; the table shows the tokens).
  The LR schedule has the same shape in every run (the same warm-up steps, anneal over the last 30% + 1).
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
  scores the held-out documents cut into inputs of at most 128 tokens, in two views:
  ``framed``: each document's text in consecutive pieces of 126 tokens, each framed [CLS] piece [SEP],
  which is how the exported tokenizer frames every text a user gives the model (and how Ettin frames
  its training chunks); a CLM target that is framing is not scored (the tokenizer adds it; it is not
  text). ``stream``: the stored document (framed once) in consecutive pieces of 128 tokens, so a
  piece after a document's first starts mid-text with no [CLS], as run_mlm / run_clm's blocks of a
  concatenated stream do (43% of the held-out tokens lie in such pieces). Each model family is
  trained on one of these views and scores better on it (measured, CLM seed 21 on the CPU: the
  transformers decoder, trained on the stream, is 0.038 nats better than ``document`` on ``stream``
  and 0.037 worse on ``framed``), so the table shows both; the acceptance is read on ``framed``, the inputs
  the model will get. MLM: 15% of ordinary tokens chosen by mlm_mask, ``EVAL_MASKS`` (8) times per
  piece from generators seeded by the piece and draw numbers, so every model sees identical masks
  (one draw alone moved a model's score by ~0.2 nats: ~1,100 masked tokens); CLM: the next token
  within the piece. Reported: mean loss per labelled token (nats).
- Seeds: a 1M-parameter MLM sits on a unigram plateau (~6.3 nats) for a variable number of steps
  before it learns to use context, and when it leaves decides where it ends: with the demo's 10
  warm-up steps the training loss first fell below 5.0 after 270-670 steps (56 runs), and that step
  explains 80% of the held-out loss's spread over seeds (correlation 0.9; 0.1-0.25 nats std at 900
  steps' worth of tokens, against 0.02 for CLM), so a dozen seeds compared plateau exits, not
  layouts (benchmarks/RESULTS.md). Warmed up over 100 steps, the runs leave together (below 5.0
  after 290-380 steps, 14 runs; held-out std 0.03-0.05 nats), hence ``--warmup-steps`` 100; 10
  reproduces the earlier tables, whose rows carry no "warmup" (read as 10). ``--seeds`` repeats
  every training run with each seed (weights and data order; the evaluator's masks never change)
  and the table compares the means, with the standard error of each gap. ``--jobs N`` measures N
  training runs side by side in child processes (a GPU machine's many cores:
  benchmarks/gpu_model_quality.sh).

    python -m benchmarks.model_quality                # one seed, every run (~8 runs)
    python -m benchmarks.model_quality --seeds 21 22 23 --json rows.json   # rows.json keeps finished runs
    python -m benchmarks.model_quality --quick        # smoke test: 4 steps' worth of tokens
    python -m benchmarks.model_quality --table a.json b.json   # the table of rows files together
    python -m benchmarks.model_quality --streams --objectives mlm   # what each layout's runs read
    python -m benchmarks.model_quality --curves --seeds 21 22 23   # training loss per stretch, plateau exits
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy
import torch

REPO = Path(__file__).resolve().parents[1]
SEQ, MICRO, GLOBAL, LR, MIN_LR, WD, WARMUP = 128, 16, 32, 3e-3, 3e-4, 0.01, 10  # WARMUP: the demo's steps
BENCHMARK_WARMUP = 100  # LR warm-up steps of the benchmark's runs (see Seeds)
SEED, HOLDOUT_EVERY, EVAL_MASK_RATE = 21, 50, 0.15  # SEED: the evaluator's masks; training seeds: --seeds
EVAL_MASKS = 8  # MLM masks per held-out piece: ~9,000 scored positions instead of ~1,100
LAYOUTS = ("document", "packed", "concat")
OPTIMIZER_RUNS = {"stableadamw": ("document", ["--optimizer", "stableadamw", "--fully-decoupled-weight-decay",
                                               "--weight-decay", "3e-4"])}
"""Runs of another optimizer: (layout, pretrain flags). ``stableadamw`` is Ettin's (its 17m-68m weight decay,
3e-4 fully decoupled, no gradient clipping) on the default layout: it pairs with ``document`` (AdamW, weight
decay 0.01, clip 1.0)."""
RUNS = ("transformers", *LAYOUTS, *OPTIMIZER_RUNS)
PAIRS = [*((layout, ref) for layout in LAYOUTS for ref in ("packed", "transformers") if layout != ref),
         *((name, "document") for name in OPTIMIZER_RUNS)]
"""(run, reference) pairs of the paired table."""
LOSS_FIELDS = {"framed": "heldout_loss_framed", "stream": "heldout_loss"}  # a row's loss in each view


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
    from ettin_megatron.prep.sample_corpus import build_sample_corpus
    from ettin_megatron.prep.train_tokenizer import train_tokenizer

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


def pretrain_flags(objective: str, layout: str, iters: int, prefix: str, tokenizer: str, seed: int = SEED,
                   attention: str = "auto", warmup: int = WARMUP, optimizer: list[str] = ()) -> list[str]:
    """The demo's flags (examples/pretrain_ettin_common.sh) for a run of ``iters`` steps, ``warmup`` of
    them warming the LR up; ``optimizer`` flags replace the demo's AdamW settings."""
    return ["--objective", objective, "--model-size", "tiny", "--no-bf16", "--data-path", prefix,
            "--split", "100,0,0", "--data-layout", layout, "--tokenizer-model", tokenizer,
            "--seq-length", str(SEQ), "--micro-batch-size", str(MICRO), "--global-batch-size", str(GLOBAL),
            "--train-iters", str(iters), "--lr", str(LR), "--lr-warmup-iters", str(warmup),
            "--weight-decay", str(WD), "--lr-decay-style", "WSD", "--lr-wsd-decay-style", "minus_sqrt",
            "--min-lr", str(MIN_LR), "--lr-wsd-decay-iters", str(iters * 3 // 10 + 1),
            "--attention-output-dropout", "0.0", "--log-interval", "10", "--eval-iters", "0",
            "--seed", str(seed), "--attention-backend", attention, *optimizer]


def training_dataset(objective: str, layout: str, budget: int, prefix: str, tokenizer: str, seed: int):
    """``layout``'s training dataset as pretrain builds it, with samples enough for ``budget`` tokens
    (budget / 16: a sample holds more than 16 tokens on this corpus; steps_for_budget says if not)."""
    from ettin_megatron.training import batching
    from ettin_megatron.training.arguments import parse_args
    from ettin_megatron.training.plan import plan_run

    plan = plan_run(parse_args(pretrain_flags(objective, layout, 1, prefix, tokenizer, seed)), 1)
    train, _ = batching.run_datasets(plan, budget // 16, 0)
    return train


def steps_for_budget(train, layout: str, budget: int) -> tuple[int, int]:
    """(steps, input tokens) of the fewest whole steps of the training dataset ``train`` (of ``layout``)
    that hold ``budget`` tokens, counted on the samples pretrain will read, in its order."""
    tokens = 0
    for i in range(len(train)):
        tokens += len(train[i]["tokens"])
        if tokens >= budget and (i + 1) % GLOBAL == 0:
            return (i + 1) // GLOBAL, tokens
    raise SystemExit(f"{layout}: {len(train)} samples hold only {tokens} tokens; raise the sample estimate")


def train_ours(objective: str, run_name: str, iters: int, prefix: str, tokenizer: str, work: Path, seed: int,
               attention: str, warmup: int) -> Path:
    """Train the run ``run_name`` (a layout or an OPTIMIZER_RUNS entry) with pretrain, export to Hugging
    Face; the HF directory."""
    from ettin_megatron.runtime.distributed import free_port

    layout, optimizer = OPTIMIZER_RUNS.get(run_name, (run_name, []))
    name = f"{objective}_{run_name}_s{seed}"
    run = work / name
    shutil.rmtree(run, ignore_errors=True)  # a run of another budget: pretrain refuses a used --save
    sh(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
       "--master-port", str(free_port()),  # several benchmarks may run side by side
       "-m", "ettin_megatron.pretrain",
       *pretrain_flags(objective, layout, iters, prefix, tokenizer, seed, attention, warmup, optimizer),
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
                    seed: int, warmup: int) -> Path:
    """The plain transformers loop (see the module docstring); the saved HF directory."""
    from ettin_megatron.convert.hf_mapping import hf_config
    from ettin_megatron.convert.verify import hf_model_class
    from ettin_megatron.training.arguments import parse_args
    from ettin_megatron.training.optimizer import build_scheduler
    from ettin_megatron.training.plan import plan_run
    from ettin_megatron.training.setup import build_model_config

    plan = plan_run(parse_args(pretrain_flags(objective, "concat", iters, prefix, tokenizer, seed, warmup=warmup)), 1)
    args = plan.args
    torch.manual_seed(seed)
    model_config = build_model_config(plan.model)
    model = hf_model_class(model_config.attention)(hf_config(model_config, plan.token_ids)).to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "wd_mult": 0.0}],
                                  lr=LR, betas=(args.optim.adam_beta1, args.optim.adam_beta2),
                                  eps=args.optim.adam_eps, weight_decay=WD)
    scheduler = build_scheduler(args, plan.schedule, optimizer)
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


def heldout_views(heldout: list[numpy.ndarray], tokenizer: str) -> dict[str, list[numpy.ndarray]]:
    """The held-out documents cut into model inputs of at most SEQ tokens in the evaluator's two views,
    ``framed`` and ``stream`` (the module docstring says what each is and why both)."""
    from ettin_megatron.data.tokenizer import load_tokenizer, special_ids

    ids = special_ids(load_tokenizer(tokenizer))
    framed = []
    for document in heldout:  # stored framed once: [CLS] text [SEP]
        text = document[int(document[0] == ids.cls): len(document) - int(document[-1] == ids.sep)]
        framed += [numpy.concatenate([[ids.cls], text[start:start + SEQ - 2], [ids.sep]]).astype(numpy.int64)
                   for start in range(0, len(text), SEQ - 2)]
    stream = [document[start:start + SEQ] for document in heldout for start in range(0, len(document), SEQ)]
    return {"framed": framed, "stream": stream}


@torch.no_grad()
def evaluate(hf_dir: Path, objective: str, views: dict[str, list[numpy.ndarray]], tokenizer: str,
             device: str) -> dict[str, float]:
    """Mean loss per labelled token of each view's pieces (identical inputs and masks for every model;
    MLM: ``EVAL_MASKS`` masks of each piece, so that which tokens one draw happens to hide moves the
    score less). In the framed view a CLM target that is framing ([CLS] / [SEP]) is not scored: the
    tokenizer adds it, it is not text (MLM labels only ordinary tokens in either view)."""
    from ettin_megatron.config import attention_of
    from ettin_megatron.convert.verify import load_hf_model
    from ettin_megatron.data.tokenizer import load_tokenizer, special_ids

    ids = special_ids(load_tokenizer(tokenizer))
    model = load_hf_model(hf_dir, attention_of(objective)).to(device)
    mask = masking(tokenizer, EVAL_MASK_RATE)
    losses = {}
    for view, pieces in views.items():
        total, count = 0.0, 0
        for number, piece in enumerate(pieces):
            for draw in range(EVAL_MASKS if objective == "mlm" else 1):
                inputs, labels = targets(objective, piece, mask, numpy.random.default_rng((SEED, number, draw)))
                if view == "framed":
                    labels[(labels == ids.cls) | (labels == ids.sep)] = -100
                if (labels >= 0).sum() == 0:
                    continue
                logits = model(input_ids=inputs[None].to(device)).logits[0].float()
                total += torch.nn.functional.cross_entropy(logits, labels.to(device), reduction="sum").item()
                count += int((labels >= 0).sum())
        losses[view] = total / count
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default="runs/model_quality")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: train one on the corpus)")
    parser.add_argument("--train-tokens", type=int, default=900 * GLOBAL * SEQ)
    parser.add_argument("--warmup-steps", type=int, default=BENCHMARK_WARMUP,
                        help=f"LR warm-up steps of every run (the demo's: {WARMUP}; see Seeds)")
    parser.add_argument("--objectives", nargs="+", default=["mlm", "clm"], choices=["mlm", "clm"])
    parser.add_argument("--runs", nargs="+", default=["transformers", *LAYOUTS], choices=RUNS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[SEED],
                        help="training seeds (weights and data order); the table shows each run's mean")
    parser.add_argument("--attention-backend", default="auto",
                        help="pretrain's --attention-backend (sdpa on a GPU: no FlexAttention compile per run)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="training runs measured side by side, each by a child process of this script "
                             "(a GPU, or a machine with many cores)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 steps' worth of tokens")
    parser.add_argument("--json", default=None,
                        help="rows file: rows already in it are kept and not measured again, new ones added")
    parser.add_argument("--table", nargs="+", metavar="ROWS", default=None,
                        help="measure nothing: print the tables of these rows files together (at --train-tokens)")
    parser.add_argument("--streams", action="store_true",
                        help="measure nothing: what each layout's runs read (the first --seeds seed, --objectives' first)")
    parser.add_argument("--curves", action="store_true",
                        help="measure nothing: the mean training loss over --seeds per stretch of the run, and when "
                             f"it first fell below {' / '.join(map(str, EXIT_LOSSES))}, from the work dir's logs")
    opts = parser.parse_args()
    if opts.quick:
        opts.train_tokens = 4 * GLOBAL * SEQ
    if opts.table:
        rows = [r for path in opts.table for r in json.loads(Path(path).read_text())]
        print(tables(rows, (opts.train_tokens, opts.warmup_steps)))
        return
    if opts.curves:
        print(curves(Path(opts.work_dir), opts.objectives, opts.runs, opts.seeds))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(opts.work_dir).resolve()
    start = time.time()
    data = prepare(work, opts.tokenizer)  # before any child process, which then finds it ready
    heldout = documents(data[1])
    views = heldout_views(heldout, data[2])
    if opts.streams:
        print(streams(opts, data[0], data[2]))
        return
    print(f"held-out: {len(heldout)} documents, {sum(map(len, heldout)):,} tokens; budget "
          f"{opts.train_tokens:,} training tokens per run; device {device}", flush=True)
    rows = json.loads(Path(opts.json).read_text()) if opts.json and Path(opts.json).exists() else []
    rows = run_jobs(opts, work, rows) if opts.jobs > 1 else measure(opts, work, rows, data, views, device)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cpus, {device}, torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.1f}; total {time.time() - start:.0f} s\n")
    print(tables(rows, (opts.train_tokens, opts.warmup_steps)))


def measured(rows: list[dict], opts: argparse.Namespace, seed: int, objective: str, name: str) -> bool:
    """Whether ``rows`` already holds this (seed, objective, run) at this budget and warm-up."""
    wanted = (objective, name, seed, (opts.train_tokens, opts.warmup_steps))
    return any((r["objective"], r["run"], r["seed"], setting(r)) == wanted for r in rows)


def measure(opts: argparse.Namespace, work: Path, rows: list[dict], data: tuple[str, str, str],
            views: dict[str, list[numpy.ndarray]], device: str) -> list[dict]:
    """Train and score every (seed, objective, run) not yet in ``rows``, one after another."""
    train_prefix, _, tokenizer = data
    for seed in opts.seeds:
        for objective in opts.objectives:
            for name in opts.runs:
                if measured(rows, opts, seed, objective, name):
                    continue
                t0 = time.time()
                if name == "transformers":
                    steps = math.ceil(opts.train_tokens / (GLOBAL * SEQ))
                    tokens = steps * GLOBAL * SEQ
                    hf_dir = train_reference(objective, steps, train_prefix, tokenizer, work, device, seed,
                                             opts.warmup_steps)
                else:
                    layout = OPTIMIZER_RUNS.get(name, (name,))[0]
                    train = training_dataset(objective, layout, opts.train_tokens, train_prefix, tokenizer, seed)
                    steps, tokens = steps_for_budget(train, layout, opts.train_tokens)
                    hf_dir = train_ours(objective, name, steps, train_prefix, tokenizer, work, seed,
                                        opts.attention_backend, opts.warmup_steps)
                loss = evaluate(hf_dir, objective, views, tokenizer, device)
                rows.append({"objective": objective, "run": name, "seed": seed, "budget": opts.train_tokens,
                             "warmup": opts.warmup_steps, "steps": steps, "tokens": tokens,
                             "heldout_loss": loss["stream"], "heldout_loss_framed": loss["framed"],
                             "seconds": round(time.time() - t0)})
                print(json.dumps(rows[-1]), flush=True)
                if opts.json:
                    Path(opts.json).write_text(json.dumps(rows, indent=1))
    return rows


def run_jobs(opts: argparse.Namespace, work: Path, rows: list[dict]) -> list[dict]:
    """Each (seed, objective, run) measured by a child process of this script, ``opts.jobs`` at a time,
    seeds in order (a measurement cut short still has whole seeds). A child keeps its rows in its own
    file in the work directory (``rows_<objective>_<run>_s<seed>.json``, so a rerun skips what it
    finished); each is merged into ``rows`` and ``opts.json`` as it ends."""
    pending = [(seed, objective, name) for seed in opts.seeds for objective in opts.objectives for name in opts.runs
               if not measured(rows, opts, seed, objective, name)]
    threads = str(max(1, (os.cpu_count() or 1) // opts.jobs))
    running: list[tuple[subprocess.Popen, Path]] = []
    while pending or running:
        while pending and len(running) < opts.jobs:
            seed, objective, name = pending.pop(0)
            part = work / f"rows_{objective}_{name}_s{seed}.json"
            command = [sys.executable, "-m", "benchmarks.model_quality", "--work-dir", str(work), "--train-tokens", str(opts.train_tokens),
                       "--warmup-steps", str(opts.warmup_steps),
                       "--objectives", objective, "--seeds", str(seed), "--runs", name,
                       "--attention-backend", opts.attention_backend, "--json", str(part)]
            with open(work / f"job_{part.stem[5:]}.log", "w") as log:
                running.append((subprocess.Popen(command + (["--tokenizer", opts.tokenizer] if opts.tokenizer else []),
                                                 stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                                 env={**os.environ, "OMP_NUM_THREADS": threads}), part))
        time.sleep(1)
        for job in [job for job in running if job[0].poll() is not None]:
            running.remove(job)
            process, part = job
            new = [r for r in (json.loads(part.read_text()) if part.exists() else []) if r not in rows]
            rows += new
            for r in new:
                print(json.dumps(r), flush=True)
            if process.returncode:
                print(f"{part.stem}: child failed ({process.returncode}); see job_{part.stem[5:]}.log", flush=True)
            if opts.json:
                Path(opts.json).write_text(json.dumps(rows, indent=1))
    return rows


def streams(opts: argparse.Namespace, prefix: str, tokenizer: str) -> str:
    """What a training run of each layout reads, over all its steps at the budget: tokens and labels per
    sample, labels per step, short samples, attention segments per sample. Two layouts that agree
    here train on the same chunks with the same statistics, and differ only in their order and masks."""
    objective, seed = opts.objectives[0], opts.seeds[0]
    lines = ["| layout | steps | samples read | tokens / sample | labels / token | labels / step (std) | "
             "samples < 64 tokens | segments / sample |", "|---|---|---|---|---|---|---|---|"]
    for layout in [name for name in opts.runs if name != "transformers"]:
        train = training_dataset(objective, layout, opts.train_tokens, prefix, tokenizer, seed)
        steps, _ = steps_for_budget(train, layout, opts.train_tokens)
        samples = [train[i] for i in range(steps * GLOBAL)]
        tokens = numpy.array([len(s["tokens"]) for s in samples])
        labels = numpy.array([s["loss_mask"].sum() for s in samples])
        per_step = labels.reshape(steps, GLOBAL).sum(1)
        lines.append(f"| {layout} | {steps} | {len(samples)} | {tokens.mean():.1f} | {labels.sum() / tokens.sum():.4f} | "
                     f"{per_step.mean():.0f} ({per_step.std():.0f}) | {(tokens < 64).mean():.1%} | "
                     f"{numpy.mean([len(s['segment_lengths']) for s in samples]):.3f} |")
    return "\n".join(lines)


CURVE_STRETCHES = (0.05, 0.15, 0.25, 0.35, 0.45, 0.6, 0.8, 1.0)
"""Bounds of the stretches of a run (shares of its steps) whose logged training losses curves() averages."""


def training_curve(work: Path, objective: str, layout: str, seed: int):
    """(logged steps, their training losses, the run's steps) from a run's log; None unless it ran to
    the end."""
    log = work / f"{objective}_{layout}_s{seed}.log"
    steps = re.findall(r"^step\s+(\d+)/(\d+) \| loss ([\d.]+)", log.read_text() if log.exists() else "", re.M)
    if not steps or steps[-1][0] != steps[-1][1]:
        return None
    return numpy.array([int(s) for s, _, _ in steps]), numpy.array([float(v) for _, _, v in steps]), int(steps[-1][1])


def curves(work: Path, objectives: list[str], runs: list[str], seeds: list[int]) -> str:
    """Markdown: each (objective, layout)'s logged training loss averaged over each stretch of the run
    and over the seeds whose logs are complete: when in the run one layout trains faster or slower
    than another (held-out losses say only where runs end); then when its runs left the MLM's unigram
    plateau: the first logged step whose training loss is below each of EXIT_LOSSES."""
    heads = [f"{a:.0%}-{b:.0%}" for a, b in zip(CURVE_STRETCHES, CURVE_STRETCHES[1:])]
    lines = ["| objective | layout | seeds | " + " | ".join(heads) + " |", "|---|---|---|" + "---|" * len(heads)]
    exits = ["| objective | layout | seeds | " + " | ".join(f"below {v} (median, range)" for v in EXIT_LOSSES) + " |",
             "|---|---|---|" + "---|" * len(EXIT_LOSSES)]
    for objective in objectives:
        for layout in [name for name in runs if name != "transformers"]:
            logged = [c for c in (training_curve(work, objective, layout, seed) for seed in seeds) if c is not None]
            if not logged:
                continue
            means = [[loss[(step / total > a) & (step / total <= b)].mean()
                      for a, b in zip(CURVE_STRETCHES, CURVE_STRETCHES[1:])] for step, loss, total in logged]
            lines.append(f"| {objective} | {layout} | {len(means)} | "
                         + " | ".join(f"{v:.2f}" for v in numpy.mean(means, 0)) + " |")
            firsts = [[step[loss < v][0] if (loss < v).any() else total for step, loss, total in logged]
                      for v in EXIT_LOSSES]
            exits.append(f"| {objective} | {layout} | {len(logged)} | "
                         + " | ".join(f"{numpy.median(f):.0f} ({min(f)}-{max(f)})" for f in firsts) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(exits)


EXIT_LOSSES = (6.0, 5.5, 5.0)
"""Training losses whose first crossing curves() reports: a tiny MLM's unigram plateau sits at ~6.3-6.5."""


def setting(row: dict) -> tuple[int, int]:
    """(token budget, warm-up steps) of a row; rows from before --warmup-steps warmed up for the demo's."""
    return row["budget"], row.get("warmup", WARMUP)


def heldout_losses(rows: list[dict], wanted: tuple[int, int]) -> dict[tuple[str, str, str, int], float]:
    """Each row's held-out loss at the ``wanted`` setting in each view it has, keyed (objective, view,
    run, seed)."""
    return {(r["objective"], view, r["run"], r["seed"]): r[field] for r in rows if setting(r) == wanted
            for view, field in LOSS_FIELDS.items() if field in r}


def tables(rows: list[dict], wanted: tuple[int, int]) -> str:
    """The means table and the paired table of the rows at the ``wanted`` setting."""
    return f"{table(rows, wanted)}\n\n{paired(rows, wanted)}"


def table(rows: list[dict], wanted: tuple[int, int]) -> str:
    """Markdown: each (objective, view, run)'s mean held-out loss over its seeds, and the gaps between
    means with their standard error (the runs' seed-to-seed spread, sqrt(s1^2/n1 + s2^2/n2); "-" with
    one seed), so that a gap can be read against the noise of training a tiny model."""
    losses: dict[tuple[str, str, str], numpy.ndarray] = {}
    by_seed = heldout_losses(rows, wanted)
    for key in sorted(by_seed, key=lambda k: (k[0], RUNS.index(k[2]), k[3])):
        losses[key[:3]] = numpy.append(losses.get(key[:3], []), by_seed[key])
    variance = lambda x: numpy.var(x, ddof=1) / len(x) if len(x) > 1 else numpy.nan  # of the mean
    lines = ["| objective | view | run | seeds | held-out loss per seed (nats) | mean | std | vs transformers | vs packed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (objective, view, run), x in sorted(losses.items(), key=lambda item: item[0][:2]):  # stable: runs in order
        std = f"{numpy.std(x, ddof=1):.3f}" if len(x) > 1 else "-"
        gaps = []
        for ref in ("transformers", "packed"):
            y = losses.get((objective, view, ref))
            if y is None or ref == run:
                gaps.append("-" if y is None else "0")
                continue
            error = numpy.sqrt(variance(x) + variance(y))
            gaps.append(f"{x.mean() - y.mean():+.3f}" + ("" if numpy.isnan(error) else f" ± {error:.3f}"))
        lines.append(f"| {objective} | {view} | {run} | {len(x)} | {' '.join(f'{v:.3f}' for v in x)} | {x.mean():.4f} | "
                     f"{std} | " + " | ".join(gaps) + " |")
    return "\n".join(lines)


def paired(rows: list[dict], wanted: tuple[int, int]) -> str:
    """Markdown: each layout's gap to ``packed`` and to the reference, and each other optimizer's to
    ``document`` (PAIRS), seed by seed (the seeds both ran):
    mean with its paired standard error, median, and in how many seeds the layout is worse. With the
    demo's 10 warm-up steps a tiny MLM's late exits from its unigram plateau made single seeds miss by
    up to ~0.6 nats either way, so a mean of a dozen seeds could sit a standard error or two from zero;
    the median and the count are not moved by one such seed."""
    loss = heldout_losses(rows, wanted)
    lines = ["| objective | view | run | vs | seeds | mean gap (paired) | median gap | worse in |", "|---|---|---|---|---|---|---|---|"]
    for objective, view in sorted({key[:2] for key in loss}):
        for run, ref in PAIRS:
            seeds = sorted(s for (o, v, name, s) in loss if (o, v, name) == (objective, view, run)
                           and (objective, view, ref, s) in loss)
            if not seeds:
                continue
            gap = numpy.array([loss[objective, view, run, s] - loss[objective, view, ref, s] for s in seeds])
            error = f" ± {numpy.std(gap, ddof=1) / math.sqrt(len(gap)):.3f}" if len(gap) > 1 else ""
            lines.append(f"| {objective} | {view} | {run} | {ref} | {len(gap)} | {gap.mean():+.3f}{error} | "
                         f"{numpy.median(gap):+.3f} | {int((gap > 0).sum())} of {len(gap)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
