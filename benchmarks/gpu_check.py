"""GPU checks in one run: correctness on the device first, then what the step waits for.

1. Host syncs of a packed forward + backward, counted by CUDA's own sync debugger
   (``torch.cuda.set_sync_debug_mode("warn")``), for 2, 8 and 32 documents per batch: the count must
   not grow with the documents (RoPE and attention read lengths from the host copy).
2. Every attention backend that runs here against sdpa on the GPU, forward and backward (fp32).
3. The Ettin encoder against transformers' ModernBertForMaskedLM on the GPU, same weights: logits within
   1e-4 relative (of the largest logit) in fp32, 1e-2 in bf16 (issue 29's bounds; bf16 keeps 8 bits of
   mantissa, ~4e-3 per rounding, and the two implementations round in different places).

    python -m benchmarks.gpu_check          # prints a table; exits 1 if a check fails
"""

from __future__ import annotations

import argparse
import warnings

import torch
import transformers

from ettin_megatron.config import ATTENTIONS, ettin_config
from ettin_megatron.convert.hf_mapping import from_hf_state_dict, hf_config
from ettin_megatron.model import EttinModel, packed_seq_params
from ettin_megatron.model.attention import EttinCoreAttention, available_backends
from ettin_megatron.runtime import initialize

FAILED = []
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU runs what it can, as a dry run


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def packed_batch(lengths, vocab=50000, device=DEVICE):
    n = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)  # on the host
    positions = torch.cat([torch.arange(length) for length in lengths])[None].to(device)
    tokens = torch.randint(0, vocab, (1, n), device=device)
    return tokens, positions, cu


def host_syncs(backend: str) -> dict:
    config = ettin_config("tiny", attention_backend_name=backend, attention_dropout=0.0)
    model = EttinModel(config).to(DEVICE)
    counts = {}
    for documents in (2, 8, 32):
        tokens, positions, cu = packed_batch([1024 // documents] * documents)
        params = packed_seq_params(cu, 1024 // documents, DEVICE)
        model(tokens, positions, labels=tokens, packed_seq_params=params).float().sum().backward()  # warm-up
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                loss = model(tokens, positions, labels=tokens, packed_seq_params=params).float().sum()
                loss.backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts[documents] = sum("synchroniz" in str(w.message) for w in caught)
    return counts


def backend_parity(backend: str) -> float:
    """Largest relative difference to sdpa of outputs and q/k/v gradients, fp32, packed documents."""
    worst = 0.0
    for attention in ATTENTIONS:
        for layer_number in (1, 2):  # global, local
            lengths = [37, 200, 5, 130]
            q, k, v = (torch.randn(sum(lengths), 2, 64, device=DEVICE, requires_grad=True) for _ in range(3))
            cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
            params = packed_seq_params(cu, max(lengths), DEVICE)
            results = []
            for name in ("sdpa", backend):
                config = ettin_config("tiny", attention=attention, attention_backend_name=name,
                                      local_attention_window=16, attention_dropout=0.0)
                module = EttinCoreAttention(config, layer_number=layer_number).to(DEVICE)
                out = module(q, k, v, None, packed_seq_params=params)
                grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
                results.append((out, *grads))
            for a, b in zip(*results):
                worst = max(worst, ((a - b).abs().max() / b.abs().max()).item())
    return worst


def hf_parity(size: str, dtype: torch.dtype) -> float:
    config = ettin_config(size, attention_backend_name="auto")
    hf = transformers.ModernBertForMaskedLM(hf_config(config)).eval()
    ours = EttinModel(config)
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), config))
    hf, ours = hf.to(DEVICE, dtype), ours.eval().to(DEVICE, dtype)
    tokens = torch.randint(0, 50000, (2, 512), device=DEVICE)
    cu = torch.tensor([0, 512, 1024], dtype=torch.int32)
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits.float().reshape(1, 1024, -1)
        got = ours(tokens.reshape(1, -1), torch.arange(512, device=DEVICE).repeat(2)[None],
                   packed_seq_params=packed_seq_params(cu, 512, DEVICE)).float()
    return ((got - expected).abs().max() / expected.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="150m", help="preset of the transformers comparison")
    args = parser.parse_args()
    initialize()
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)"
    print(f"device: {name}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"backends {available_backends()}", flush=True)
    if DEVICE != "cuda":
        print("skip host syncs per forward+backward: CUDA's sync debugger needs a GPU", flush=True)
    for backend in [b for b in ("sdpa", "flex") if DEVICE == "cuda" and b in available_backends()]:
        counts = host_syncs(backend)
        check(f"host syncs per forward+backward, {backend}", len(set(counts.values())) == 1,
              f"{counts} (documents: syncs)")
    for backend in [b for b in available_backends() if b != "sdpa"]:
        error = backend_parity(backend)
        check(f"{backend} vs sdpa, forward and backward, fp32", error < 1e-3, f"max relative difference {error:.2e}")
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 1e-2)):
        error = hf_parity(args.size, dtype)
        check(f"{args.size} encoder vs ModernBertForMaskedLM logits, {dtype}", error < tolerance,
              f"max relative difference {error:.2e}")
    raise SystemExit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
