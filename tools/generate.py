"""Continue a prompt with an exported Ettin decoder (a Hugging Face directory), greedily.

    python tools/generate.py hf/decoder "The Python standard library" --max-new-tokens 20
"""

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("model", help="Hugging Face directory of an exported decoder (convert_checkpoint.py megatron-to-hf)")
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=20, help="tokens to generate")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ettin_megatron.convert.hf_files import read_exported_config

    try:
        read_exported_config(args.model, "clm")
    except ValueError as exc:  # one line, before transformers' own traceback for a wrong directory
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    inputs = tokenizer(args.prompt, return_tensors="pt", return_token_type_ids=False)
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(f"{args.prompt} -> {tokenizer.decode(output[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
