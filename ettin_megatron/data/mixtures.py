"""Data mixtures: a YAML file naming dataset prefixes with weights.

Megatron-LM takes a blend as `--data-path 0.3 /data/a_text_document 0.7 /data/b_text_document`; a
15-source mixture on one command line is unreadable and unreviewable, so Ettin's mixtures live in YAML:

    name: ettin-phase1
    datasets:
      - name: DCLM                                  # optional, for humans and logs
        prefix: ${ETTIN_DATA}/phase1/dclm_text_document
        weight: 837.2                               # any positive number; Megatron normalizes

`prefix` expands environment variables and `~`; a relative prefix is relative to the YAML file, so a
mixture can sit beside its data; the name of a dataset's .bin or .idx file stands for its prefix.
`mixture_blend` returns the weights and prefixes, which training hands to megatron-core's
BlendedMegatronDatasetConfig as its (prefixes, weights) blend.
"""

import os
import re
from typing import List, Tuple

import yaml

from ettin_megatron.data.index_file import dataset_prefix
from ettin_megatron.errors import InputError

_UNSET_VAR = re.compile(r"\$\{?(\w+)")


def mixture_blend(yaml_path: str, check_exists: bool = False) -> Tuple[List[float], List[str]]:
    """Read a mixture file; return parallel (weights, prefixes) lists.

    With `check_exists`, every prefix must name an existing .bin/.idx pair (check before training,
    not an hour into it).
    """
    with open(yaml_path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    entries = spec.get("datasets") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{yaml_path}: expected a 'datasets:' list of {{prefix, weight}} entries")
    weights, prefixes = [], []
    for number, entry in enumerate(entries, start=1):
        where = f"{yaml_path}: datasets[{number}]"
        if not isinstance(entry, dict) or "prefix" not in entry or "weight" not in entry:
            raise InputError(f"{where}: needs 'prefix' and 'weight'")
        weight = entry["weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise InputError(f"{where}: weight must be a positive number, got {weight!r}")
        prefixes.append(_resolve(str(entry["prefix"]), yaml_path, where, check_exists))
        weights.append(float(weight))
    return weights, prefixes


def _resolve(prefix: str, yaml_path: str, where: str, check_exists: bool) -> str:
    expanded = os.path.expanduser(os.path.expandvars(prefix))
    unset = _UNSET_VAR.search(expanded)
    if unset:
        raise InputError(f"{where}: environment variable {unset.group(1)} is not set ({prefix})")
    if not os.path.isabs(expanded):
        expanded = os.path.join(os.path.dirname(os.path.abspath(yaml_path)), expanded)
    expanded = dataset_prefix(expanded)
    if check_exists and not all(os.path.isfile(expanded + ext) for ext in (".bin", ".idx")):
        raise InputError(f"{where}: no dataset at {expanded} (.bin/.idx)")
    return expanded
