"""Parameter counts of the registered generators for one LoRA layout, without building their weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..lora import LoraLayout
from ..lora.for_backbone import layout_for
from .checkpoint import meta_parameters
from .library import LibraryNeeded
from .registry import build_generator, generator_names, num_parameters


def generator_sizes(
    layout: LoraLayout, cond_dim: int, n_prompts: int, names: Sequence[str] | None = None
) -> dict[str, dict]:
    """``{name: {"num_parameters", "ratio_to_hyperconv"}}`` for ``names`` (default: every registered generator).

    Generators are built with their parameters on the meta device (shapes only: no memory, no init
    cost; see :func:`~deltalora.generators.checkpoint.meta_parameters`) with default options.
    The ratio is None when hyperconv is not registered. A generator whose size depends on the teachers it
    is built on (``mixture``: one logit per member) has ``num_parameters`` None and says why in ``note``.
    """
    known = generator_names()
    names = list(dict.fromkeys(names or known))
    counts: dict[str, int | None] = {}
    notes: dict[str, str] = {}
    for name in dict.fromkeys([*names, *(["hyperconv"] if "hyperconv" in known else [])]):
        with meta_parameters():
            try:
                counts[name] = num_parameters(build_generator(name, layout, cond_dim=cond_dim, n_prompts=n_prompts))
            except LibraryNeeded as exc:
                counts[name], notes[name] = None, str(exc)
    ref = counts.get("hyperconv")
    out = {}
    for n in names:
        c = counts[n]
        out[n] = {"num_parameters": c, "ratio_to_hyperconv": None if ref is None or c is None else c / ref}
        if n in notes:
            out[n]["note"] = notes[n]
    return out


def generator_info(
    backbone: str,
    generators: Sequence[str] | None = None,
    rank: int = 8,
    alpha: float = 16.0,
    targets: str | list[str] = "q,v",
    layers: str | list[int] | None = None,
    cond_dim: int = 384,
    n_prompts: int = 8,
) -> dict[str, Any]:
    """:func:`generator_sizes` on ``backbone``'s layout for the LoRA spec (only the backbone's config is read),
    with the spec, the layout's LoRA parameter and slot counts, ``cond_dim`` and ``n_prompts``."""
    layout = layout_for(backbone, rank=rank, alpha=alpha, targets=targets, layers=layers)
    return {
        "backbone": backbone,
        "lora": layout.spec.model_dump(mode="json"),
        "lora_params": layout.num_params,
        "num_slots": len(layout.slots),
        "cond_dim": cond_dim,
        "n_prompts": n_prompts,
        "generators": generator_sizes(layout, cond_dim, n_prompts, generators or None),
    }


__all__ = ["generator_info", "generator_sizes"]
