"""Build what a run trains: the model config, the model chunks wrapped in Megatron's DDP, and the
schedule hooks Megatron-LM's training.py puts on the config (gradient scaling, no-sync, finalize).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.transformer.module import Float16Module

from ..config import EttinConfig, attention_of, ettin_config
from ..model import EttinModel
from ..model.init import initialize_weights
from .arguments import Arguments
from .plan import ModelPlan


def build_model_config(plan: ModelPlan) -> EttinConfig:
    """The EttinConfig of the planned model, with the attention its training objective trains."""
    args, vpp = plan.args, plan.virtual_pipeline_size
    m, p, r = args.model, args.parallel, args.run
    dtype = torch.bfloat16 if r.bf16 else torch.float32
    overrides = dict(
        **vars(plan.shape),
        attention=attention_of(m.objective),
        attention_backend_name=m.attention_backend,
        global_rope_theta=m.global_rope_theta, local_rope_theta=m.local_rope_theta,
        attention_output_dropout=m.attention_output_dropout,
        max_position_embeddings=m.max_position_embeddings,
        vocab_size=plan.vocab_size,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=vpp,
        # As Megatron-LM: the interleaved schedule overlaps p2p and sends each direction on its own
        # (batched sends to the same peer in both directions would cross when PP = 2).
        overlap_p2p_comm=vpp is not None, batch_p2p_comm=vpp is None,
        sequence_parallel=p.sequence_parallel and p.tensor_model_parallel_size > 1,
        bf16=r.bf16, params_dtype=dtype, pipeline_dtype=dtype,
        calculate_per_token_loss=True,
        recompute_granularity=r.recompute_granularity, recompute_method=r.recompute_method,
        recompute_num_layers=r.recompute_num_layers,
    )
    if r.fp8_format:
        overrides.update(fp8=r.fp8_format, fp8_recipe="delayed")
    return ettin_config(m.model_size, seq_length=args.data.seq_length, **overrides)


def build_model(args: Arguments, config: EttinConfig) -> list:
    """One EttinModel per virtual pipeline chunk of this rank (``config`` is build_model_config's), each
    wrapped in Megatron's DDP, with the initial weights of --seed that every parallel layout shares
    (model/init.py)."""
    vpp = config.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vpp) if vpp else [None]:
        chunk = EttinModel(
            config,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            spec=args.model.spec, vp_stage=vp_stage,
        )
        initialize_weights(chunk, args.run.seed)
        for param in chunk.parameters():
            tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(param)
        if torch.cuda.is_available():
            chunk.cuda(torch.cuda.current_device())
        if config.bf16:
            chunk = Float16Module(config, chunk)
        chunks.append(chunk)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=config.bf16,
        overlap_grad_reduce=args.parallel.overlap_grad_reduce,
        use_distributed_optimizer=args.parallel.use_distributed_optimizer,
    )
    return [
        DistributedDataParallel(config, ddp_config, chunk, disable_bucketing=i > 0)
        for i, chunk in enumerate(chunks)
    ]


def unwrap(model_chunks: list) -> list:
    """The EttinModels inside DDP (and Float16Module) wrappers."""
    out = []
    for chunk in model_chunks:
        while not isinstance(chunk, EttinModel):
            chunk = chunk.module
        out.append(chunk)
    return out


def wire_schedule_hooks(config: EttinConfig, model_chunks: list, optimizer, args: Arguments) -> None:
    """What Megatron-LM's training.py sets on the config before the first forward_backward_func call:
    loss scaling (fp16/bf16 optimizers), the DP gradient reduce and its overlap hooks."""
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    if args.parallel.overlap_grad_reduce:
        no_sync = [chunk.no_sync for chunk in model_chunks]
        grad_sync = [chunk.start_grad_sync for chunk in model_chunks]
        config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
        config.grad_sync_func = grad_sync[0] if len(grad_sync) == 1 else grad_sync
