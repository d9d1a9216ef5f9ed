"""ettin-megatron: the Ettin encoder/decoder suite on Megatron-Core."""

__version__ = "0.1.0"
