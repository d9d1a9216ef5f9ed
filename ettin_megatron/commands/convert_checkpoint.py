"""Convert Ettin checkpoints between Megatron (dist checkpoint, any TP/PP) and Hugging Face.

  megatron-to-hf --load CKPT --output DIR [--tokenizer TOK] [--attention bidirectional|causal] [--dtype D]
                 [--verify]
      A checkpoint root (its latest iteration) or iter_N directory saved at any TP / PP, read on CPU in
      one process (no torchrun), written as a HF directory: config.json, model.safetensors, tokenizer,
      generation_config.json (decoders) and the sentence-transformers files.
  hf-to-megatron --hf-dir DIR --save CKPT [--tokenizer TOK] [--attention bidirectional|causal] [--verify]
      A HF ModernBERT / ModernBertDecoder directory (safetensors) to a dist checkpoint that loads at
      any TP / PP; continue training from it with --load CKPT --finetune (fresh optimizer and schedule).

--attention exports / imports the same weights as the other architecture (encoder <-> decoder).
--verify runs both sides on sample text and exits 1 when the max logit difference over non-pad
positions exceeds --tolerance. Bad input is reported in one line (exit 2).
"""

from __future__ import annotations

import argparse
import sys

from ettin_megatron.cli import command_parser, non_negative_float, non_negative_int, positive_int
from ettin_megatron.commands import run_conversion


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(s):
        # config.ATTENTIONS, spelled out: importing config imports megatron before main() quiets its notices.
        s.add_argument("--attention", choices=("bidirectional", "causal"), default=None,
                       help="export / import the same weights as the other architecture (encoder <-> decoder); "
                            "default: the source's own")
        s.add_argument("--verify", action="store_true", help="compare logits of both sides on sample text")
        s.add_argument("--tolerance", type=non_negative_float, default=1e-4,
                       help="largest accepted |logit difference| (float32)")
        s.add_argument("--verify-text", action="append", default=None, metavar="TEXT",
                       help="a sample sentence for --verify (repeatable; default: built-in sentences)")

    m2h = sub.add_parser("megatron-to-hf", allow_abbrev=False, help="dist checkpoint -> Hugging Face directory")
    m2h.add_argument("--load", required=True, help="checkpoint root or iter_N directory")
    m2h.add_argument("--output", required=True, help="HF directory to write (replaced if an earlier export)")
    m2h.add_argument("--tokenizer", default=None,
                     help="tokenizer directory / tokenizer.json (default: the one named in ettin_config.json)")
    m2h.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                     help="dtype of model.safetensors (default: the checkpoint's)")
    common(m2h)

    h2m = sub.add_parser("hf-to-megatron", allow_abbrev=False, help="Hugging Face directory -> dist checkpoint")
    h2m.add_argument("--hf-dir", required=True, help="HF model directory with config.json and *.safetensors")
    h2m.add_argument("--save", required=True, help="new (empty) checkpoint directory")
    h2m.add_argument("--iteration", type=non_negative_int, default=0, help="iteration number to save as")
    h2m.add_argument("--tokenizer", default=None,
                     help="tokenizer directory / tokenizer.json to store with it (default: the HF directory's own)")
    h2m.add_argument("--target-tensor-parallel-size", type=positive_int, default=1,
                     help="check the model splits at this TP (the checkpoint itself loads at any TP)")
    h2m.add_argument("--target-pipeline-parallel-size", type=positive_int, default=1,
                     help="check the model splits at this PP (the checkpoint itself loads at any PP)")
    common(h2m)
    return p


def _texts(args):
    from ettin_megatron.convert.verify import SAMPLE_TEXTS

    return tuple(args.verify_text) if args.verify_text else SAMPLE_TEXTS


def _report(difference: float, tolerance: float) -> int:
    ok = difference <= tolerance
    print(f"verify: max |logit difference| over non-pad positions = {difference:.3e} "
          f"({'ok' if ok else 'ABOVE'} tolerance {tolerance:.1e})")
    return 0 if ok else 1


def run(args) -> int:
    if args.command == "megatron-to-hf":
        from ettin_megatron.convert.export_hf import megatron_to_hf
        from ettin_megatron.convert.hf_mapping import ARCHITECTURES
        from ettin_megatron.convert.verify import verify_against_dir

        output, model = megatron_to_hf(args.load, args.output, tokenizer=args.tokenizer, attention=args.attention,
                                       dtype=args.dtype, return_model=True)
        print(f"wrote {output} ({'decoder' if model.config.causal else 'encoder'}: {type(model).__name__} -> "
              f"{ARCHITECTURES[model.config.attention]})")
        if args.verify:
            return _report(verify_against_dir(model, output, _texts(args)), args.tolerance)
        return 0
    from ettin_megatron.checkpoint import read_checkpoint_config
    from ettin_megatron.convert.import_hf import hf_to_megatron
    from ettin_megatron.convert.verify import verify_import

    directory = hf_to_megatron(args.hf_dir, args.save, attention=args.attention, iteration=args.iteration,
                               target_tp=args.target_tensor_parallel_size,
                               target_pp=args.target_pipeline_parallel_size, tokenizer=args.tokenizer,
                               require_tokenizer=args.verify)
    print(f"wrote {directory}; train from it with --load {args.save} --finetune (loads at any TP / PP)")
    if read_checkpoint_config(directory)["tokenizer"] is None:
        print("note: the Hugging Face directory has no tokenizer.json; pass --tokenizer to megatron-to-hf later")
    if args.verify:
        return _report(verify_import(args.save, args.hf_dir, args.attention, _texts(args)), args.tolerance)
    return 0


def main(argv=None) -> int:
    return run_conversion(run, parser, argv)


if __name__ == "__main__":  # dist_checkpointing's writer spawns a process that re-imports __main__
    sys.exit(main())
