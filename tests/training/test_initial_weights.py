"""The initial weights depend on --seed and the model only: bit-identical at TP=2, PP=2, PP=2 x VPP=2
and DP=2 to the single-rank model's.

Each layout builds its model as training does (setup.build_model) and saves it untrained; the
single-rank process loads every such checkpoint into its own layout (dist_checkpointing reassembles
the shards) and compares it, bitwise, with the model it built itself. The DP ranks also compare
their replicas with each other.
"""

import pytest
import torch

from tests.ranks import run_ranks

SEED = 5
LAYOUTS = {
    "TP=2": dict(tensor_model_parallel_size=2),
    "PP=2": dict(pipeline_model_parallel_size=2),
    "PP=2 VPP=2": dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
    "DP=2": dict(),
}


def _build(**layout):
    from ettin_megatron.runtime import ParallelLayout, initialize
    from ettin_megatron.training.arguments import make_arguments
    from ettin_megatron.training.plan import plan_model
    from ettin_megatron.training.setup import build_model, build_model_config, unwrap

    args = make_arguments(model_size="tiny", vocab_size=1024, spec="local", seed=SEED, **layout)
    plan = plan_model(args)
    p = args.parallel
    initialize(ParallelLayout(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                              plan.virtual_pipeline_size), seed=SEED)
    config = build_model_config(plan)
    return unwrap(build_model(args, config)), config


def _save_layouts(rank, root):
    from ettin_megatron.checkpoint import save_checkpoint

    replicas = None
    for name, layout in LAYOUTS.items():
        chunks, config = _build(**layout)
        save_checkpoint(f"{root}/{name}", 0, chunks, config)
        if name == "DP=2":
            replicas = {k: v.clone() for k, v in chunks[0].state_dict().items() if torch.is_tensor(v)}
    return replicas


def _compare(rank, root):
    from ettin_megatron.checkpoint import load_checkpoint

    (reference,), _ = _build()
    expected = {k: v.clone() for k, v in reference.state_dict().items() if torch.is_tensor(v)}
    differing = {}
    for name in LAYOUTS:
        (model,), _ = _build()
        for param in model.parameters():
            param.data.fill_(float("nan"))
        load_checkpoint(f"{root}/{name}/iter_{0:07d}", [model])
        got = model.state_dict()
        differing[name] = [k for k, v in expected.items() if not torch.equal(got[k], v)]
    return differing, expected


@pytest.mark.timeout(900)
def test_initial_weights_are_the_same_on_every_layout(tmp_path):
    root = str(tmp_path)
    replicas = run_ranks(2, _save_layouts, root, timeout=600)
    ((differing, expected),) = run_ranks(1, _compare, root, timeout=600)
    assert differing == {name: [] for name in LAYOUTS}, differing
    assert replicas[0].keys() == replicas[1].keys() == expected.keys()
    assert all(torch.equal(replicas[0][k], expected[k]) and torch.equal(replicas[1][k], expected[k])
               for k in expected)
