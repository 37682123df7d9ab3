"""LoRA generators: condition embeddings -> LoRA weights (DnD's tokenizer + HyperConv, and a compact generator)."""

from .registry import build_generator, generator_names, num_parameters, register_generator
from .tokenizer import LoraTokenizer, criterion_weights, weighted_token_mse

__all__ = [
    "LoraTokenizer",
    "criterion_weights",
    "weighted_token_mse",
    "build_generator",
    "generator_names",
    "num_parameters",
    "register_generator",
]
