"""The Ettin model on Megatron-Core: RoPE per attention kind, attention backends, layer specs, the model."""

from .attention import available_backends
from .ettin_model import EttinModel, packed_seq_params

__all__ = ["EttinModel", "available_backends", "packed_seq_params"]
