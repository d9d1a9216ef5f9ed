"""Merge indexed datasets: many prefixes into one, in the order given.

Preprocessing shards in parallel jobs and merging afterwards must give the same bytes as preprocessing
the concatenated input; megatron-core's IndexedDatasetBuilder.add_index does exactly that (it appends
the token bytes and shifts the document index). Like preprocess, it writes under temporary names and
renames at the end, so an interrupted merge leaves no complete-looking pair. The merged prefix gets
the record (dataset_info.py) of its inputs' concatenation when they all have one, made alike.
"""

import os
from typing import List, Sequence

from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from ettin_megatron.cli import check_writable
from ettin_megatron.data.dataset_info import merged_info, read_info, write_info
from ettin_megatron.data.index_file import existing_dataset, open_dataset
from ettin_megatron.errors import InputError
from ettin_megatron.files import publish, remove_temps, temp_paths


def dataset_prefixes(inputs: Sequence[str]) -> List[str]:
    """Expand --input: a dataset prefix stays as is (a .bin or .idx name gives its prefix); a directory
    gives all its prefixes, sorted (Megatron-LM's merge tool takes a directory)."""
    prefixes = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, name[: -len(".idx")])
                for name in os.listdir(item)
                if name.endswith(".idx") and IndexedDataset.exists(os.path.join(item, name[:-4]))
            )
            if not found:
                raise InputError(f"{item}: directory holds no .bin/.idx pair")
            prefixes.extend(found)
        else:
            prefixes.append(existing_dataset(item))
    return prefixes


def merge_datasets(prefixes: Sequence[str], output_prefix: str) -> dict:
    """Concatenate the datasets at `prefixes` into `output_prefix`; return counts of the result.

    All inputs must share one token dtype and, when they have records, one tokenizer, framing and
    level; either all inputs have a record or none (a Megatron-LM prefix's tokenizer is unknown).
    Checked before writing anything.
    """
    if not prefixes:
        raise InputError("nothing to merge")
    if os.path.abspath(output_prefix) in {os.path.abspath(p) for p in prefixes}:
        raise InputError(f"{output_prefix}: the output is also an input")
    dtypes = {prefix: open_dataset(prefix).index.dtype for prefix in prefixes}
    if len(set(dtypes.values())) > 1:
        detail = ", ".join(f"{p}: {d.__name__}" for p, d in dtypes.items())
        raise InputError(f"datasets have different token dtypes (different tokenizers?): {detail}")
    record = _merged_record(prefixes)
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    check_writable(out_dir, "--output-prefix")
    os.makedirs(out_dir, exist_ok=True)
    temp = temp_paths(output_prefix)
    try:
        builder = IndexedDatasetBuilder(temp[0], dtype=dtypes[prefixes[0]])
        for prefix in prefixes:
            builder.add_index(prefix)
        builder.finalize(temp[1])
        if record is not None:
            write_info(temp[2], record)
        publish(temp, output_prefix)
    finally:
        remove_temps(temp)
    return {
        "datasets": len(prefixes),
        "documents": len(builder.document_indices) - 1,
        "sequences": len(builder.sequence_lengths),
        "tokens": int(sum(builder.sequence_lengths)),
    }


def _merged_record(prefixes: Sequence[str]):
    """The merged prefix's record, or None when no input has one."""
    infos = [read_info(prefix) for prefix in prefixes]
    with_record = [prefix for prefix, info in zip(prefixes, infos) if info is not None]
    if not with_record:
        return None
    if len(with_record) < len(prefixes):
        missing = next(prefix for prefix, info in zip(prefixes, infos) if info is None)
        raise InputError(f"{missing} has no .meta.json record (not from tools/preprocess_data.py) but "
                         f"{with_record[0]} has: cannot check they share a tokenizer; re-run "
                         "tools/preprocess_data.py on it")
    return merged_info(infos, list(prefixes), tool="tools/merge_datasets.py")
