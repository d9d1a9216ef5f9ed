"""The body run on each of two gloo ranks by the ``parallel_run`` fixture (importable for spawn)."""

from __future__ import annotations

from pathlib import Path

import torch

from ettin_megatron.config import ATTENTIONS

LAYOUTS = {"tp2": dict(tensor_parallel=2), "pp2": dict(pipeline_parallel=2),
           "pp2-vpp2": dict(pipeline_parallel=2, virtual_pipeline_parallel=2)}
TRAINED = ("tp2", "pp2")  # layouts that also train a model (the VPP layout only re-saves)
STEPS = 3


def _train_batch(seed: int, vocab: int) -> dict:
    from ettin_megatron.data.batches import collate

    generator = torch.Generator().manual_seed(seed)
    samples = []
    for n in (40, 25):
        samples.append({"tokens": torch.randint(vocab, (n,), generator=generator),
                        "labels": torch.randint(vocab, (n,), generator=generator),
                        "loss_mask": torch.ones(n), "segment_lengths": [n]})
    return collate(samples)


def _run_schedule(ddp, batch, with_labels: bool, captured: dict) -> None:
    """One micro-batch through Megatron's schedule (1F1B at PP=2, no pipelining at PP=1)."""
    from megatron.core import tensor_parallel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from ettin_megatron.model import packed_seq_params

    def step(data_iterator, chunk):
        params = packed_seq_params(batch["cu_seqlens"], batch["max_seqlen"])
        output = chunk(batch["tokens"], batch["position_ids"], labels=batch["labels"] if with_labels else None,
                       packed_seq_params=params)

        def loss_func(output_tensor):
            if with_labels:
                loss = (output_tensor * batch["loss_mask"]).sum() / batch["loss_mask"].sum()
                captured.setdefault("losses", []).append(loss.item())
                return loss, {"loss": loss.detach()}
            captured["logits"] = tensor_parallel.gather_from_tensor_model_parallel_region(output_tensor).detach()
            return output_tensor.sum() * 0, {}

        return output, loss_func

    get_forward_backward_func()(
        forward_step_func=step, data_iterator=None, model=[ddp], num_microbatches=1,
        seq_length=batch["tokens"].shape[1], micro_batch_size=1, forward_only=not with_labels,
    )


def worker(rank, root, imported, tokenizer_dir, ids, mask):
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from ettin_megatron.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
    from ettin_megatron.data.batches import repad, unpad
    from ettin_megatron.model import EttinModel
    from ettin_megatron.runtime import ParallelLayout, initialize
    from tests.hf_models import VOCAB, tiny_config

    root = Path(root)
    logits, losses = {}, {}
    for name, layout in LAYOUTS.items():
        initialize(ParallelLayout(**layout), seed=21)
        for attention in ATTENTIONS:
            config = tiny_config(attention, tensor_model_parallel_size=layout.get("tensor_parallel", 1),
                                 pipeline_model_parallel_size=layout.get("pipeline_parallel", 1),
                                 virtual_pipeline_model_parallel_size=layout.get("virtual_pipeline_parallel"))
            config.finalize_model_grads_func = finalize_model_grads

            def build(vp_stage=None):
                return EttinModel(
                    config, spec="local", vp_stage=vp_stage,
                    pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                    post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage))

            # (a) the HF-imported checkpoint, loaded at this layout and saved again from it
            vpp = layout.get("virtual_pipeline_parallel")
            chunks = [build(v) for v in range(vpp)] if vpp else [build()]
            load_checkpoint(imported[attention], chunks)
            tokenizer = read_checkpoint_config(imported[attention])["tokenizer"]
            save_checkpoint(root / "resaved" / name / attention, 0, chunks, config, tokenizer=tokenizer)
            if name not in TRAINED:
                continue

            # (b) a fresh model trained a few Adam steps at this layout, then saved
            model = build()
            ddp = DistributedDataParallel(config, DistributedDataParallelConfig(), model)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            captured = {}
            for step in range(STEPS):
                ddp.zero_grad_buffer()
                _run_schedule(ddp, _train_batch(0, VOCAB - 8), True, captured)  # one batch: the loss must fall
                for p in model.parameters():
                    p.grad = p.main_grad
                optimizer.step()
                for p in model.parameters():
                    p.grad = None
            model.eval()
            _run_schedule(ddp, unpad(ids, mask), False, captured)
            save_checkpoint(root / "trained" / name / attention, STEPS, [model], config, tokenizer=tokenizer_dir)
            if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
                logits[(name, attention)] = repad(captured["logits"], mask)
                losses[(name, attention)] = captured["losses"]
    return {"logits": logits, "losses": losses}
