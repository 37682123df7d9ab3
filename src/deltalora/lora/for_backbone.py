"""LoRA layouts and adapter checks for a backbone given by name (registered name, local model dir or HF id).

Only the backbone's config is read (:func:`~deltalora.backbones.architecture_of`), never its weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..backbones import architecture_of
from ..config import LoraSpec, model_validate_or_raise
from .adapter_io import inspect_adapter
from .layout import LoraLayout, derive_layout


def layout_for(
    backbone: str,
    rank: int = 8,
    alpha: float = 16.0,
    targets: str | list[str] = "q,v",
    layers: str | list[int] | None = None,
    rslora: bool = False,
) -> LoraLayout:
    """Every LoRA slot of the spec (validated first: ConfigError naming "lora options") on ``backbone``."""
    spec = model_validate_or_raise(
        LoraSpec, dict(rank=rank, alpha=alpha, targets=targets, layers=layers, rslora=rslora), "lora options"
    )
    return derive_layout(architecture_of(backbone), spec)


def inspect_adapter_for(directory: str | Path, backbone: str | None = None) -> dict[str, Any]:
    """:func:`~deltalora.lora.inspect_adapter`, checking shapes against ``backbone``'s when one is given."""
    return inspect_adapter(directory, architecture_of(backbone) if backbone else None)


__all__ = ["inspect_adapter_for", "layout_for"]
