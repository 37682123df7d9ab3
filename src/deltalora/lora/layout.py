"""Derive every LoRA slot of a backbone from its config — never typed in by hand.

A *slot* is one adapted linear layer: (decoder layer, projection module). Its shapes come from the
architecture config (hidden size, heads, KV heads, head dim, FFN width); its module path and the key
PEFT saves it under come from the family's naming. Everything downstream (adapter IO, injection,
DnD tokenisation, generators) iterates ``LoraLayout.slots`` in one canonical order: layer-major, and
inside a layer ``q, k, v, o, gate, up, down``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..backbones.architecture import Architecture, module_path
from ..config import MODULE_ORDER, LoraSpec
from ..errors import ConfigError

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Slot:
    """One adapted linear layer: ``A`` is [rank, in_features], ``B`` is [out_features, rank]."""

    index: int
    layer: int
    module: str
    path: str
    in_features: int
    out_features: int
    rank: int

    @property
    def key(self) -> str:
        """Stable short id, e.g. ``3.q_proj``."""
        return f"{self.layer}.{self.module}"

    @property
    def a_shape(self) -> tuple[int, int]:
        return (self.rank, self.in_features)

    @property
    def b_shape(self) -> tuple[int, int]:
        return (self.out_features, self.rank)

    @property
    def peft_key_a(self) -> str:
        return f"{PEFT_PREFIX}{self.path}.lora_A.weight"

    @property
    def peft_key_b(self) -> str:
        return f"{PEFT_PREFIX}{self.path}.lora_B.weight"

    @property
    def num_params(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            key=self.key,
            a_shape=list(self.a_shape),
            b_shape=list(self.b_shape),
            peft_key_a=self.peft_key_a,
            peft_key_b=self.peft_key_b,
            num_params=self.num_params,
        )
        return d


@dataclass(frozen=True)
class LoraLayout:
    """All slots of one (backbone architecture, LoRA spec) pair, in canonical order."""

    arch: Architecture | None  # None when inferred from an adapter file without its backbone
    spec: LoraSpec
    slots: tuple[Slot, ...]

    @property
    def num_params(self) -> int:
        return sum(s.num_params for s in self.slots)

    @property
    def scale(self) -> float:
        return self.spec.scale

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({s.layer for s in self.slots}))

    @property
    def signature(self) -> tuple:
        """What adapters must share to be stacked into one batch: every slot's key and A/B shapes, and the scale.
        Batching, Δ extraction and the teacher dataset all compare layouts by this one value."""
        return tuple((s.key, s.a_shape, s.b_shape) for s in self.slots), float(self.scale)

    def by_key(self) -> dict[str, Slot]:
        return {s.key: s for s in self.slots}

    def by_peft_key(self) -> dict[str, tuple[Slot, str]]:
        """Map each PEFT saved key to (slot, "A" | "B")."""
        out: dict[str, tuple[Slot, str]] = {}
        for s in self.slots:
            out[s.peft_key_a] = (s, "A")
            out[s.peft_key_b] = (s, "B")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": asdict(self.arch) if self.arch is not None else None,
            "lora": self.spec.model_dump(mode="json"),
            "scale": self.scale,
            "num_slots": len(self.slots),
            "num_params": self.num_params,
            "slots": [s.to_dict() for s in self.slots],
        }


def derive_layout(config: Any, spec: LoraSpec) -> LoraLayout:
    """Every slot of ``spec`` on the backbone described by ``config`` (PretrainedConfig, dict or Architecture)."""
    arch = config if isinstance(config, Architecture) else Architecture.from_config(config)
    layers = spec.layers if spec.layers is not None else tuple(range(arch.num_hidden_layers))
    bad = [i for i in layers if i >= arch.num_hidden_layers]
    if bad:
        raise ConfigError(
            f"LoRA layers {bad} do not exist: the backbone has {arch.num_hidden_layers} layers "
            f"(0..{arch.num_hidden_layers - 1})"
        )
    slots = []
    for layer in layers:
        for module in MODULE_ORDER:
            if module not in spec.targets:
                continue
            fin, fout = arch.linear_shape(module)
            slots.append(
                Slot(
                    index=len(slots),
                    layer=layer,
                    module=module,
                    path=module_path(layer, module),
                    in_features=fin,
                    out_features=fout,
                    rank=spec.rank,
                )
            )
    return LoraLayout(arch=arch, spec=spec, slots=tuple(slots))
