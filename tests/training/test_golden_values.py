"""Golden values, as Megatron-LM's functional tests keep them: a fixed tiny run of the encoder and of the
decoder (the default data layout, dropout on, data-loader workers on) must repeat, step by step, the
losses, gradient norms, learning rates and token counts stored in golden_values.json, and read the very
micro-batches whose digests are stored there.

The digests are exact: one sample in another order, one token masked differently, one more pad token
changes them. The floats hold to GOLDEN_RTOL: well below what one changed sample or mask moves
(~1e-3 of the loss), above the last bits that other CPUs' kernels may change.

A change that is meant to change these numbers (a new init, another masking rule) regenerates them, and
its commit says why:

    python -m tests.training.test_golden_values --update
"""

import itertools
import json
import re
import sys
from pathlib import Path

import pytest

from tests.ranks import run_ranks
from tests.training.training_data import base_args, write_corpus

GOLDEN = Path(__file__).with_name("golden_values.json")
GOLDEN_RTOL = 1e-5
RUN = dict(seq_length=64, micro_batch_size=4, global_batch_size=16, train_iters=6, lr_warmup_iters=2,
           attention_output_dropout=0.1, num_workers=2)
CORPUS = dict(num_docs=400, min_len=8, max_len=120, seed=0)
"""Documents up to 120 tokens, so that the document layout cuts some into chunks of 64 (backfill included)."""


def golden_run(rank, root, objective) -> dict:
    """The run's step rows and the digests of the micro-batches each step read."""
    from ettin_megatron.data.batches import batch_digest
    from ettin_megatron.training import loop
    from ettin_megatron.training.arguments import make_arguments

    read, real_step_iterators = [], loop.step_iterators

    def recording(batches, num_micro, num_chunks):  # observes what the loop reads, changes nothing
        step = list(itertools.islice(batches, num_micro))
        read.append([batch_digest(batch) for batch in step])
        return real_step_iterators(iter(step), num_micro, num_chunks)

    args = make_arguments(**base_args(write_corpus(root, **CORPUS), objective=objective, **RUN))
    loop.step_iterators = recording
    try:
        rows = [row for row in loop.pretrain(args) if "loss" in row]
    finally:
        loop.step_iterators = real_step_iterators
    return {"loss": [row["loss"] for row in rows], "grad_norm": [row["grad_norm"] for row in rows],
            "lr": [row["lr"] for row in rows], "tokens": [row["tokens"] for row in rows], "micro_batches": read}


def _run(objective, root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    (values,) = run_ranks(1, golden_run, str(root), objective, timeout=600)
    return values


@pytest.mark.timeout(600)
@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_a_tiny_run_repeats_its_golden_values(objective, tmp_path):
    golden = json.loads(GOLDEN.read_text())[objective]
    got = _run(objective, tmp_path)
    assert got["micro_batches"] == golden["micro_batches"], "the run read other micro-batches"
    assert got["tokens"] == golden["tokens"] and got["lr"] == pytest.approx(golden["lr"], rel=GOLDEN_RTOL)
    assert got["loss"] == pytest.approx(golden["loss"], rel=GOLDEN_RTOL), (got["loss"], golden["loss"])
    assert got["grad_norm"] == pytest.approx(golden["grad_norm"], rel=GOLDEN_RTOL)


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        values = {objective: _run(objective, Path(scratch) / objective) for objective in ("mlm", "clm")}
    text = json.dumps(values, indent=1)  # then each innermost list on one line: diffs read well
    GOLDEN.write_text(re.sub(r"\[\s+([^][]*?)\s+\]", lambda inner: "[" + " ".join(inner[1].split()) + "]", text) + "\n")
    print(f"wrote {GOLDEN}")
