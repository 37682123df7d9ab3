"""LoRA weights held in plain tensors, keyed by slot.

``LoraWeights`` is the in-memory currency between adapter files, generators and the injection
hooks. Tensors are either one adapter (``A``: [r, in], ``B``: [out, r]) or a stack of ``K`` adapters
with a leading batch dimension (``A``: [K, r, in], ``B``: [K, out, r]). They may require grad.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .layout import LoraLayout


def peft_a_init(shape: Sequence[int], in_features: int, generator: torch.Generator) -> torch.Tensor:
    """PEFT's default LoRA-A init, nn.Linear's ``kaiming_uniform_(a=√5)`` on ``[..., r, in]``: uniform on ±1/√in,
    drawn from ``generator`` (CPU). The one place the zoo's teachers and the generators' fixed A are drawn."""
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(tuple(shape), generator=generator) * 2 - 1) * bound


@dataclass
class LoraWeights:
    layout: LoraLayout
    A: dict[str, torch.Tensor]  # slot.key -> [r, in] or [K, r, in]
    B: dict[str, torch.Tensor]  # slot.key -> [out, r] or [K, out, r]

    def __post_init__(self) -> None:
        keys = [s.key for s in self.layout.slots]
        if set(self.A) != set(keys) or set(self.B) != set(keys):
            missing = sorted(set(keys) - set(self.A) | set(keys) - set(self.B))
            extra = sorted((set(self.A) | set(self.B)) - set(keys))
            raise ValueError(f"LoraWeights keys do not match the layout (missing {missing[:3]}, extra {extra[:3]})")
        k = None
        for s in self.layout.slots:
            a, b = self.A[s.key], self.B[s.key]
            batched = a.dim() == 3
            if batched:
                ka = (a.shape[0], *s.a_shape), (b.shape[0], *s.b_shape)
                ok = a.shape == ka[0] and b.shape == ka[1] and a.shape[0] == b.shape[0]
                k_here = a.shape[0]
            else:
                ok = tuple(a.shape) == s.a_shape and tuple(b.shape) == s.b_shape
                k_here = None
            if not ok:
                raise ValueError(
                    f"slot {s.key}: A {tuple(a.shape)} / B {tuple(b.shape)} do not fit "
                    f"A {s.a_shape} / B {s.b_shape} (optionally with a leading batch dim)"
                )
            if s.index == 0:
                k = k_here
            elif k_here != k:
                raise ValueError(f"slot {s.key}: batch size {k_here} differs from slot 0's {k}")
        self._num_adapters = k

    @property
    def num_adapters(self) -> int | None:
        """K for a stacked batch, None for a single adapter."""
        return self._num_adapters

    @classmethod
    def zeros(
        cls, layout: LoraLayout, num_adapters: int | None = None, dtype=torch.float32, device=None
    ) -> "LoraWeights":
        lead = () if num_adapters is None else (num_adapters,)
        A = {s.key: torch.zeros(*lead, *s.a_shape, dtype=dtype, device=device) for s in layout.slots}
        B = {s.key: torch.zeros(*lead, *s.b_shape, dtype=dtype, device=device) for s in layout.slots}
        return cls(layout, A, B)

    @classmethod
    def random(
        cls,
        layout: LoraLayout,
        num_adapters: int | None = None,
        std: float = 0.02,
        seed: int = 0,
        dtype=torch.float32,
        device=None,
    ) -> "LoraWeights":
        """Gaussian A and B (both non-zero, unlike PEFT's init) — for tests and benchmarks."""
        g = torch.Generator().manual_seed(seed)
        lead = () if num_adapters is None else (num_adapters,)
        A = {
            s.key: (torch.randn(*lead, *s.a_shape, generator=g) * std).to(dtype=dtype, device=device)
            for s in layout.slots
        }
        B = {
            s.key: (torch.randn(*lead, *s.b_shape, generator=g) * std).to(dtype=dtype, device=device)
            for s in layout.slots
        }
        return cls(layout, A, B)

    @classmethod
    def stack(cls, adapters: Sequence["LoraWeights"]) -> "LoraWeights":
        """K single adapters of one layout -> one batched ``LoraWeights``."""
        if not adapters:
            raise ValueError("stack needs at least one adapter")
        layout = adapters[0].layout
        for w in adapters:
            if w.num_adapters is not None:
                raise ValueError("stack takes single adapters, not batches")
            if w.layout.signature != layout.signature:
                raise ValueError("stack needs adapters of one layout (same slots, rank and scale)")
        A = {s.key: torch.stack([w.A[s.key] for w in adapters]) for s in layout.slots}
        B = {s.key: torch.stack([w.B[s.key] for w in adapters]) for s in layout.slots}
        return cls(layout, A, B)

    def select(self, i: int) -> "LoraWeights":
        """Adapter ``i`` of a batch, as a single adapter."""
        if self.num_adapters is None:
            raise ValueError("select needs a batched LoraWeights")
        return LoraWeights(self.layout, {k: v[i] for k, v in self.A.items()}, {k: v[i] for k, v in self.B.items()})

    def tensors(self) -> list[torch.Tensor]:
        return [t for s in self.layout.slots for t in (self.A[s.key], self.B[s.key])]

    def to(self, *args, **kwargs) -> "LoraWeights":
        return LoraWeights(
            self.layout,
            {k: v.to(*args, **kwargs) for k, v in self.A.items()},
            {k: v.to(*args, **kwargs) for k, v in self.B.items()},
        )
