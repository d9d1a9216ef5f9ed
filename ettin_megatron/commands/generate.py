"""Continue a prompt with an exported Ettin decoder (a Hugging Face directory), greedily.

    python tools/generate.py hf/decoder "The Python standard library" --max-new-tokens 20
"""

import argparse
import sys

from ettin_megatron.cli import positive_int, run_command
from ettin_megatron.commands import model_and_text_parser


def parser() -> argparse.ArgumentParser:
    p = model_and_text_parser(__doc__, "Hugging Face directory of an exported decoder (convert_checkpoint.py "
                              "megatron-to-hf)", "text to continue", text_name="prompt")
    p.add_argument("--max-new-tokens", type=positive_int, default=20, help="tokens to generate")
    return p


def main(argv=None) -> int:
    def run():
        args = parser().parse_args(argv)
        print(f"{args.text} -> {generate(args.model_dir, args.text, args.max_new_tokens)}")

    return run_command(run)


def generate(model_dir: str, prompt: str, max_new_tokens: int) -> str:
    """The greedy continuation of ``prompt`` (its new tokens, decoded); a directory that is not an exported
    decoder is refused in one line before transformers would raise its own traceback."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ettin_megatron.convert.hf_files import read_exported_config

    read_exported_config(model_dir, "causal")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    inputs = tokenizer(prompt, return_tensors="pt", return_token_type_ids=False)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


if __name__ == "__main__":
    sys.exit(main())
