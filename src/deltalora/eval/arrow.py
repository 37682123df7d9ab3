"""Arrow routing (Ostapenko et al. 2024) over a library of LoRA experts, through PEFT's ``create_arrow_model``.

Arrow is not one adapter: at every adapted linear layer, each token is routed to the ``top_k`` experts whose
prototype (the top right singular vector of the expert's ΔW there) is most aligned with it, and their LoRA
outputs are mixed with softmax(|similarity| / temperature) weights. So a :class:`Routed` candidate is scored by
its own model: PEFT injects the experts and the router into the backbone in place, the evaluator runs it as
its base arm, and the experts are unloaded afterwards (the backbone is left as it was).

PEFT computes every expert's LoRA output for every token before mixing, so a call costs about E LoRA
forwards per token and holds a [tokens, E, out_features] tensor: give it small batches (``batch_rows``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..lora.adapter_io import WEIGHTS_NAME, load_adapter
from ..tasks import Task
from .runner import evaluate_task


@dataclass(frozen=True)
class Routed:
    """An Arrow candidate: the expert adapter directories and the router's settings."""

    experts: tuple[Path, ...]
    top_k: int = 3
    temperature: float = 1.0
    batch_rows: int = 8
    seed: int = 0  # PEFT's power-iteration start for the prototypes

    def key(self, salt: str) -> str:
        """A content key: the experts' weight files (by hash, in order) and the router's settings."""
        files = [hashlib.sha256((Path(p) / WEIGHTS_NAME).read_bytes()).hexdigest() for p in self.experts]
        body = {"arrow": files, "top_k": self.top_k, "temperature": self.temperature, "seed": self.seed}
        return hashlib.sha256((salt + json.dumps(body, sort_keys=True)).encode()).hexdigest()[:32]


@contextmanager
def routed_model(backbone, routed: Routed) -> Iterator[object]:
    """``backbone.model`` with the experts and an Arrow router injected (PEFT), restored on exit."""
    from peft import ArrowConfig, create_arrow_model

    if not routed.experts:
        raise ConfigError("Arrow needs at least one expert adapter")
    if not 1 <= routed.top_k <= len(routed.experts):
        raise ConfigError(f"Arrow top_k must be between 1 and the {len(routed.experts)} experts, got {routed.top_k}")
    for p in routed.experts:  # a broken expert fails here, with deltalora's one-line error, before PEFT touches it
        load_adapter(p, backbone.arch)
    config = ArrowConfig(top_k=routed.top_k, router_temperature=routed.temperature, rng_seed=routed.seed)
    model = create_arrow_model(backbone.model, [str(p) for p in routed.experts], config)
    model.eval()
    try:
        yield model
    finally:
        model.unload()  # removes every LoRA layer (experts and router), without merging anything


def evaluate_routed(backbone, task: Task, routed: Routed, name: str = "arrow", **kwargs) -> dict:
    """:func:`~deltalora.eval.runner.evaluate_task` of the Arrow-routed model as one arm ``name``."""
    kwargs.setdefault("batch_rows", routed.batch_rows)
    with routed_model(backbone, routed):
        return evaluate_task(backbone, task, {name: None}, **kwargs)


__all__ = ["Routed", "evaluate_routed", "routed_model"]
