"""Offline preparation of the corpus, before any training: reading JSONL / Parquet / MDS inputs,
tokenizing and framing documents, writing Megatron indexed datasets (.bin/.idx) with their records,
merging and inspecting them, training a small tokenizer and building the offline sample corpus.

Training never imports this package: it reads what this package wrote through ettin_megatron.data.
"""
