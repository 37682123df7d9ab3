"""Building the candidates a held-out task is scored with, besides its own teachers: generated adapters (from
real or random conditions) and the average merge of the training teachers.

A candidate is one adapter evaluated on a held-out task; :data:`Candidates` maps each one's name to the
report row it belongs to and its weights (``None`` for the base model, which has no adapter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..lora import LoraWeights
from ..lora.merge import merge_adapters
from ..tasks import stable_seed

Candidates = dict[str, tuple[str, LoraWeights | None]]  # candidate name -> (report row, weights; None = base)


def average_merge(teachers: Sequence[LoraWeights]) -> LoraWeights:
    """One adapter whose weight update is the exact mean of the teachers' ΔW = s·B·A in every slot (the ``avg``
    merge: rank concatenation, rank N·r, scale 1). Averaging A and B separately would be meaningless for teachers
    that start from different random A."""
    return merge_adapters(teachers, method="avg")


def random_conditions(like: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` random conditions shaped like one condition ``like`` [n_prompts, dim]: Gaussian rows rescaled to
    the rows' mean norm (unit norm for an L2-normalising encoder such as MiniLM)."""
    g = torch.Generator().manual_seed(stable_seed("random-condition", seed) % (2**63))
    x = torch.randn(n, *like.shape, generator=g)
    return x / x.norm(dim=-1, keepdim=True) * like.norm(dim=-1).mean()


@torch.no_grad()
def generate(gen: torch.nn.Module, conditions: torch.Tensor) -> list[LoraWeights]:
    """One adapter per condition ([K, n_prompts, dim]), float32 on the CPU."""
    gen.eval()
    param = next(iter(gen.parameters()))
    w = gen(conditions.to(device=param.device, dtype=param.dtype)).to("cpu", torch.float32)
    return [w.select(i) for i in range(conditions.shape[0])]


__all__ = ["Candidates", "average_merge", "generate", "random_conditions"]
