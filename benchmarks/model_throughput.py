"""Forward + backward throughput of the Ettin encoder against transformers' ModernBertForMaskedLM.

Both models get the same weights (ours is loaded from the HF model through the mapping) and the same
batch of full-length sequences; the number reported is training tokens per second of one
forward + backward (no optimizer), median over the timed steps after warm-up.

    python -m benchmarks.model_throughput --size 150m --seq-length 1024 --batch 8 --dtype bf16   # GPU
    python -m benchmarks.model_throughput --size tiny --seq-length 512 --batch 2                # CPU check
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers

from ettin_megatron.config import ettin_config
from ettin_megatron.convert.hf_mapping import from_hf_state_dict, hf_config
from ettin_megatron.model import EttinModel, packed_seq_params
from ettin_megatron.runtime import device, initialize


def timed(step, warmup: int, steps: int) -> float:
    """Median seconds of ``step()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    durations = []
    for _ in range(steps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--hf-attention", default="sdpa", help="transformers attn_implementation")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    initialize()
    dev = device()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    config = ettin_config(args.size, attention_backend_name=args.attention_backend, seq_length=args.seq_length)
    hf_cfg = hf_config(config)
    hf_cfg._attn_implementation = args.hf_attention
    hf = transformers.ModernBertForMaskedLM(hf_cfg).to(dev, dtype)
    ours = EttinModel(config)
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), config))
    ours = ours.to(dev, dtype)

    tokens = torch.randint(0, 50000, (args.batch, args.seq_length), device=dev)
    labels = tokens.clone()
    n = args.batch * args.seq_length
    cu = torch.arange(0, n + 1, args.seq_length, dtype=torch.int32, device=dev)
    packed = dict(
        input_ids=tokens.view(1, n),
        position_ids=torch.arange(args.seq_length, device=dev).repeat(args.batch)[None],
        labels=labels.view(1, n),
        packed_seq_params=packed_seq_params(cu, args.seq_length),
    )

    def ours_step():
        ours.zero_grad(set_to_none=True)
        ours(**packed).float().mean().backward()

    def hf_step():
        hf.zero_grad(set_to_none=True)
        hf(input_ids=tokens, labels=labels).loss.backward()

    results = {name: n / timed(step, args.warmup, args.steps) for name, step in
               [("ettin-megatron", ours_step), ("transformers", hf_step)]}
    print(f"device={torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'} size={args.size} "
          f"seq={args.seq_length} batch={args.batch} dtype={args.dtype} backend={ours.decoder.layers[0].self_attention.core_attention.backend_name}")
    for name, tokens_per_s in results.items():
        print(f"{name:>16}: {tokens_per_s:,.0f} tokens/s (forward + backward)")
    print(f"{'speed-up':>16}: {results['ettin-megatron'] / results['transformers']:.2f}x")


if __name__ == "__main__":
    main()
