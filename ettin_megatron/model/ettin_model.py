"""EttinModel: the ModernBERT architecture on Megatron-Core, as an encoder (MLM) or a decoder (CLM).

    token ids -> VocabParallelEmbedding -> LayerNorm
              -> N x [ (norm) -> attention (global / 128-token local, RoPE per kind) -> + ,
                      norm -> GeGLU MLP -> + ]
              -> final LayerNorm -> head (dense, GELU, LayerNorm) -> tied vocab projection + bias

Encoder and decoder are the same class; ``config.attention`` picks bidirectional or causal attention.
Inputs are either a regular batch ([b, s] with no padding) or a packed batch ([1, t] holding several
documents, with ``PackedSeqParams`` giving their boundaries): attention never crosses a document and
no compute is spent on padding. Megatron's machinery provides the rest: pipeline stages
(``pre_process`` / ``post_process``, ``set_input_tensor``), the tied embedding across the first and
last stage, ``sharded_state_dict`` for dist_checkpointing and the vocab-parallel cross entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.models.common.language_module.language_module import LanguageModule
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.transformer_block import TransformerBlock

from ..config import EttinConfig
from .head import EttinLMHead
from .layer_specs import ettin_block_spec, resolve_spec
from .layers import EttinLayerNorm
from .rope import rotary_angles_by_kind


@dataclass
class EttinPackedSeqParams(PackedSeqParams):
    """Megatron's PackedSeqParams plus the document lengths as numbers."""

    segment_lengths: tuple[int, ...] | None = None
    """The lengths behind ``cu_seqlens`` on the host (None when only the device has them): the sdpa and
    flex kernels need them as numbers, and reading them from the GPU would make the host wait for it
    once per layer and micro-batch."""


def packed_seq_params(cu_seqlens: torch.Tensor, max_seqlen: int, device=None,
                      segment_lengths=None) -> EttinPackedSeqParams:
    """Megatron's description of a packed [1, t] batch whose documents end at ``cu_seqlens``.

    ``segment_lengths`` (as data.batches.collate gives them) default to those of ``cu_seqlens`` when it
    is on the host; ``cu_seqlens`` is copied to ``device`` (default: where it is) without waiting."""
    cu_seqlens = cu_seqlens.to(torch.int32)
    if segment_lengths is None and cu_seqlens.device.type == "cpu":
        segment_lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    on_device = cu_seqlens.to(device or cu_seqlens.device, non_blocking=True)
    return EttinPackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=on_device,
        cu_seqlens_kv=on_device,
        max_seqlen_q=int(max_seqlen),
        max_seqlen_kv=int(max_seqlen),
        segment_lengths=None if segment_lengths is None else tuple(segment_lengths),
    )


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Refuse token ids outside [0, vocab_size) before the embedding sees them.

    Megatron's VocabParallelEmbedding at TP > 1 gives an id outside every rank's shard a zero vector
    (each rank masks the ids it does not hold, then the ranks sum), so a run on data made with a
    larger tokenizer would train on garbage without a word; at TP = 1 it is an IndexError deep in the
    forward. Training refuses such data at launch (data/dataset_info.py); this is the guarantee for
    every batch, at any TP. It costs one min/max reduction per forward and no host synchronization:
    the assertion is asynchronous on a GPU (the run stops at its next synchronization, with
    a device-side assertion) and an immediate RuntimeError on the CPU.
    """
    if input_ids.numel():
        low, high = torch.aminmax(input_ids)
        torch._assert_async((low >= 0) & (high < vocab_size),
                            f"token ids must lie in [0, {vocab_size}), the model's vocabulary: the data was "
                            "made with another tokenizer (or --vocab-size is too small)")


class EttinModel(LanguageModule):
    """An Ettin encoder or decoder (one pipeline stage of it when ``pre/post_process`` say so)."""

    def __init__(self, config: EttinConfig, pre_process: bool = True, post_process: bool = True,
                 spec: str = "auto", vp_stage: int | None = None, parallel_output: bool = True):
        super().__init__(config=config)
        self.pre_process = pre_process
        self.post_process = post_process
        self.vp_stage = vp_stage
        self.parallel_output = parallel_output
        self.share_embeddings_and_output_weights = True
        self.model_type = ModelType.encoder_or_decoder
        self.spec = resolve_spec(spec)

        if pre_process:
            self.embedding = LanguageModelEmbedding(
                config=config,
                vocab_size=config.vocab_size,
                max_sequence_length=config.max_position_embeddings,
                position_embedding_type="none",
            )
            self.embedding_norm = EttinLayerNorm(config, config.hidden_size, eps=config.layernorm_epsilon)
        self.decoder = TransformerBlock(
            config=config,
            spec=ettin_block_spec(config, self.spec, vp_stage),
            pre_process=pre_process,
            post_process=post_process,
            vp_stage=vp_stage,
        )
        if post_process:
            self.head = EttinLMHead(config)
            self.output_layer = ColumnParallelLinear(
                config.hidden_size,
                config.vocab_size,
                config=config,
                init_method=config.init_method,
                bias=True,
                skip_bias_add=False,
                gather_output=not parallel_output,
                skip_weight_param_allocation=pre_process,
            )
            self.output_layer.bias.data.zero_()
        if pre_process or post_process:
            self.setup_embeddings_and_output_layer()

    def set_input_tensor(self, input_tensor) -> None:
        """Pipeline hook: the activations received from the previous stage."""
        if isinstance(input_tensor, (list, tuple)):
            input_tensor = input_tensor[0]
        self.decoder.set_input_tensor(input_tensor)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask=None,
                labels: torch.Tensor | None = None,
                packed_seq_params: PackedSeqParams | None = None) -> torch.Tensor:
        """Logits [b, s, vocab / TP] (vocab-parallel), per-token losses [b, s] when ``labels`` are given,
        or, on a stage without the head, the hidden states for the next stage.

        ``position_ids`` [b, s] restart at 0 in each packed document; ``attention_mask`` is unused
        (the mask is implied by the attention, the layer kind and ``packed_seq_params``) and kept only
        for the signature Megatron's schedules and tools expect.
        """
        hidden_states = None
        if self.pre_process:
            check_token_ids(input_ids, self.config.vocab_size)
            hidden_states = self.embedding_norm(self.embedding(input_ids=input_ids, position_ids=None))
        hidden_states = self.decoder(
            hidden_states=hidden_states,
            attention_mask=None,
            rotary_pos_emb=rotary_angles_by_kind(position_ids, self.config),
            packed_seq_params=packed_seq_params,
        )
        if not self.post_process:
            return hidden_states
        logits, _ = self.output_layer(self.head(hidden_states), weight=self.shared_embedding_or_output_weight())
        if labels is None:
            return logits.transpose(0, 1).contiguous()
        return self.compute_language_model_loss(labels, logits)
