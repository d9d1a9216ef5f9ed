"""TP=2 (with and without sequence parallelism) and PP=2 compute what the TP=PP=1 model computes.

The reference is plain autograd on the single-rank model in this process. The parallel runs load the
same weights from a dist checkpoint (dist_checkpointing re-shards them), run Megatron's own schedule
with DDP and finalize_model_grads, and hand their gradients back through a second dist checkpoint
(each parameter's gradient saved in its place), which dist_checkpointing gathers into the TP=1
layout. Logits are gathered over the vocabulary-parallel dimension.
"""

import pytest
import torch

from ettin_megatron.checkpoint import load_checkpoint, save_checkpoint
from ettin_megatron.config import ATTENTIONS
from ettin_megatron.data.batches import collate
from ettin_megatron.model import EttinModel, packed_seq_params
from tests.hf_models import VOCAB, tiny_config
from tests.ranks import run_ranks

LENGTHS = [37, 18, 64, 11]  # several documents, some longer than the 16-token window


def make_batch(attention: str) -> dict:
    """A packed batch of random documents with labels on about a third of the positions."""
    generator = torch.Generator().manual_seed(7)
    samples = []
    for n in LENGTHS:
        tokens = torch.randint(4, VOCAB, (n,), generator=generator)
        labels = torch.randint(4, VOCAB, (n,), generator=generator)
        loss_mask = (torch.rand(n, generator=generator) < 0.3).float()
        samples.append({"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "segment_lengths": [n]})
    return collate(samples, pad_to_multiple_of=2)  # sequence parallelism splits T over 2 ranks


def masked_mean(per_token_loss, loss_mask):
    return (per_token_loss * loss_mask).sum() / loss_mask.sum()


def forward(model, batch, with_labels: bool):
    params = packed_seq_params(batch["cu_seqlens"], batch["max_seqlen"])
    labels = batch["labels"] if with_labels else None
    return model(batch["tokens"], batch["position_ids"], labels=labels, packed_seq_params=params)


def config_for(attention, **parallel):
    return tiny_config(attention, num_layers=4, **parallel)


def parallel_run(rank, layout_kwargs, sequence_parallel, checkpoints, grads_out):
    """On each rank: load, forward (logits), forward + backward through Megatron's schedule."""
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from ettin_megatron.runtime import ParallelLayout, initialize

    layout = ParallelLayout(**layout_kwargs)
    initialize(layout)
    results = {}
    for attention in ATTENTIONS:
        config = config_for(
            attention,
            tensor_model_parallel_size=layout.tensor_parallel,
            pipeline_model_parallel_size=layout.pipeline_parallel,
            sequence_parallel=sequence_parallel,
        )
        config.finalize_model_grads_func = finalize_model_grads
        model = EttinModel(
            config,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
            spec="local",
        )
        load_checkpoint(checkpoints[attention], [model])
        ddp = DistributedDataParallel(config, DistributedDataParallelConfig(), model)
        batch = make_batch(attention)
        schedule = get_forward_backward_func()
        captured = {}

        def step(data_iterator, chunk, with_labels):
            output = forward(chunk, batch, with_labels)

            def loss_func(output_tensor):
                if with_labels:
                    loss = masked_mean(output_tensor, batch["loss_mask"])
                    captured["loss"] = loss.detach()
                    return loss, {"loss": loss.detach()}
                captured["logits"] = tensor_parallel.gather_from_tensor_model_parallel_region(output_tensor)
                return output_tensor.sum() * 0, {}

            return output, loss_func

        common = dict(data_iterator=None, model=[ddp], num_microbatches=1,
                      seq_length=batch["tokens"].shape[1], micro_batch_size=1)
        schedule(forward_step_func=lambda it, m: step(it, m, False), forward_only=True, **common)
        ddp.zero_grad_buffer()
        schedule(forward_step_func=lambda it, m: step(it, m, True), forward_only=False, **common)
        for param in model.parameters():
            param.data.copy_(param.main_grad)  # hand the gradient back in the parameter's place
        save_checkpoint(grads_out[attention], 0, [model], config)
        if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
            results[attention] = {k: v.detach().clone() for k, v in captured.items()}
    return results


def reference(attention, checkpoint_dir):
    """TP=PP=1 model in this process: save its weights, return logits, loss and gradients."""
    torch.manual_seed(0)
    model = EttinModel(config_for(attention), spec="local")
    save_checkpoint(checkpoint_dir, 0, [model], model.config)
    batch = make_batch(attention)
    with torch.no_grad():
        logits = forward(model, batch, with_labels=False)
    loss = masked_mean(forward(model, batch, with_labels=True), batch["loss_mask"])
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return {"logits": logits, "loss": loss.detach()}, grads


def assert_close(actual, expected, what):
    error = (actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)
    assert error <= 1e-5, f"{what}: relative error {error:.2e}"


@pytest.mark.parametrize(
    "layout, sequence_parallel",
    [
        (dict(tensor_parallel=2), False),
        (dict(tensor_parallel=2), True),
        (dict(pipeline_parallel=2), False),
    ],
    ids=["tp2", "tp2-sp", "pp2"],
)
def test_parallel_layout_matches_single_rank(layout, sequence_parallel, tmp_path):
    checkpoints = {o: str(tmp_path / f"weights-{o}") for o in ATTENTIONS}
    grads_out = {o: str(tmp_path / f"grads-{o}") for o in ATTENTIONS}
    expected = {o: reference(o, checkpoints[o]) for o in ATTENTIONS}

    per_rank = run_ranks(2, parallel_run, layout, sequence_parallel, checkpoints, grads_out)
    outputs = {k: v for rank in per_rank for k, v in rank.items()}

    for attention in ATTENTIONS:
        (want, want_grads), got = expected[attention], outputs[attention]
        assert_close(got["logits"], want["logits"], f"{attention} logits")
        assert_close(got["loss"], want["loss"], f"{attention} loss")
        gathered = EttinModel(config_for(attention), spec="local")
        load_checkpoint(grads_out[attention], [gathered])
        for name, param in gathered.named_parameters():
            assert_close(param.data, want_grads[name], f"{attention} grad of {name}")
