"""The numbers of a decoder that fix its linear layers' shapes, and where each projection lives.

Read from a transformers config (or a plain dict of its fields); the LoRA stage derives its slots from these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

# Decoder families whose projections are named and shaped like Llama's.
LLAMA_LIKE = frozenset({"llama", "qwen2", "qwen3", "mistral"})

MODULE_PARENT = {  # the submodule of a decoder layer that holds each projection
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def module_path(layer: int, module: str) -> str:
    """Dotted path of a projection inside a Llama-family causal LM, e.g. ``model.layers.3.self_attn.q_proj``."""
    return f"model.layers.{layer}.{MODULE_PARENT[module]}.{module}"


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder that fix LoRA shapes."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> "Architecture":
        """Read from a transformers ``PretrainedConfig`` or a plain dict of its fields."""
        get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
        model_type = get("model_type")
        if model_type not in LLAMA_LIKE:
            raise ConfigError(
                f"model_type {model_type!r} is not a supported decoder family; "
                f"supported: {', '.join(sorted(LLAMA_LIKE))}"
            )
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        head_dim = get("head_dim") or hidden // heads
        return cls(
            model_type=model_type,
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size")),
            num_hidden_layers=int(get("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
        )

    def linear_shape(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of one projection."""
        h, f = self.hidden_size, self.intermediate_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, f),
            "up_proj": (h, f),
            "down_proj": (f, h),
        }[module]


__all__ = ["LLAMA_LIKE", "MODULE_PARENT", "Architecture", "module_path"]
