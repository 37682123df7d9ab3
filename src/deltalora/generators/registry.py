"""Registry of LoRA generators: a name -> builder filled by a decorator.

Every generator is an ``nn.Module`` that maps a batch of conditions to a batch of LoRA weights:

    gen = build_generator("compact", layout, cond_dim=384, n_prompts=8, **options)
    theta = gen(cond)            # cond: [K, n_prompts, cond_dim] float  ->  LoraWeights with num_adapters == K

``layout`` is a :class:`deltalora.lora.LoraLayout`; every shape inside a generator is derived from it.
``options`` are the generator's own keyword arguments (validated by the builder); every builder also takes
``library`` (the training teachers, :mod:`.library`; None when the generator does not need them). A builder must be
deterministic given ``torch.manual_seed`` and store what it was built with in ``gen.spec`` (a JSON-able
dict: ``{"name": ..., "cond_dim": ..., "n_prompts": ..., "options": {...}}``) so a checkpoint can rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..lora import LoraLayout
from ..registry import Registry

GeneratorBuilder = Callable[..., nn.Module]
_GENERATORS = Registry("generator")  # name -> builder(layout, cond_dim, n_prompts, **options)


def register_generator(name: str) -> Callable[[GeneratorBuilder], GeneratorBuilder]:
    """Decorator: ``@register_generator("hyperconv")`` on ``builder(layout, cond_dim, n_prompts, library, **opts)``."""

    return _GENERATORS.register(name)


def generator_names() -> list[str]:
    _load_builtin()
    return sorted(_GENERATORS)


def build_generator(
    name: str, layout: LoraLayout, cond_dim: int, n_prompts: int, library: Any = None, **options: Any
) -> nn.Module:
    """Build generator ``name``; ``library`` is the training teachers (:class:`~.library.TeacherLibrary`), which
    generators that read the zoo need (``mixture``; ``compact`` takes its base A from it), or ``FROM_CHECKPOINT``
    when a saved generator is rebuilt."""
    _load_builtin()
    if name not in _GENERATORS:
        raise ConfigError(f"unknown generator {name!r}; known: {', '.join(sorted(_GENERATORS)) or '(none)'}")
    return _GENERATORS[name](layout, cond_dim=cond_dim, n_prompts=n_prompts, library=library, **options)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _load_builtin() -> None:
    """Import the modules that register the built-in generators (kept lazy: torch-heavy)."""
    import importlib

    for mod in ("hyperconv", "compact", "mixture"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:  # a built-in not written yet
            if e.name != f"{__package__}.{mod}":
                raise
