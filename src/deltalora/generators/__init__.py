"""LoRA generators: condition embeddings -> LoRA weights (DnD's tokenizer + HyperConv, and a compact generator)."""

from .registry import build_generator, generator_names, num_parameters, register_generator

__all__ = ["build_generator", "generator_names", "num_parameters", "register_generator"]
