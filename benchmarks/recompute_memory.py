"""Peak memory of one training forward + backward with and without activation recompute.

Each mode runs in a fresh process (peak RSS only grows): the model is built (fp32 weights and
gradient buffers on the CPU; bf16 on a GPU), then one packed micro-batch of --documents documents of
--seq-length tokens goes forward and backward. Reported: the peak of the whole process (CPU: max
RSS from getrusage; GPU: torch.cuda.max_memory_allocated) and the part the step adds above the model.

    python -m benchmarks.recompute_memory --size 150m --seq-length 1024 --documents 2    # CPU (minutes)
    python -m benchmarks.recompute_memory --size 150m --seq-length 1024 --documents 16 --attention-backend sdpa  # GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

MODES = {
    "none": {},
    "selective": dict(recompute_granularity="selective"),
    "full uniform 1": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
}


def peak_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(size: str, seq_length: int, documents: int, backend: str, mode: str) -> dict:
    import torch

    from ettin_megatron.config import ettin_config
    from ettin_megatron.model import EttinModel, packed_seq_params
    from ettin_megatron.runtime import device, initialize

    initialize()
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    config = ettin_config(size, seq_length=seq_length, params_dtype=dtype, bf16=dtype == torch.bfloat16,
                          attention_output_dropout=0.1, attention_backend_name=backend, **MODES[mode])
    model = EttinModel(config).to(device())
    for param in model.parameters():
        param.grad = torch.zeros_like(param)  # the gradient buffers training holds anyway
    tokens = documents * seq_length
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (1, tokens), generator=generator).to(device())
    positions = torch.arange(seq_length).repeat(documents)[None].to(device())
    cu_seqlens = torch.arange(0, tokens + 1, seq_length, dtype=torch.int32, device=device())
    before = peak_bytes()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    loss = model(ids, positions, labels=ids, packed_seq_params=packed_seq_params(cu_seqlens, seq_length))
    loss.float().mean().backward()
    peak = peak_bytes()
    return {"mode": mode, "peak_gb": peak / 1e9, "step_gb": (peak - before) / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="150m")
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--documents", type=int, default=2, help="documents in the packed micro-batch")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--mode", choices=MODES, help="measure one mode in this process (internal)")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.size, args.seq_length, args.documents, args.attention_backend, args.mode)))
        return
    print(f"{args.size}, {args.documents} x {args.seq_length} tokens, one forward + backward")
    print(f"{'recompute':<16} {'peak GB':>9} {'step adds GB':>13}")
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--size", args.size, "--seq-length", str(args.seq_length),
                              "--documents", str(args.documents), "--attention-backend", args.attention_backend,
                              "--mode", mode],
                             check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"{mode:<16} {row['peak_gb']:>9.2f} {row['step_gb']:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
