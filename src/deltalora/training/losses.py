"""L_weights: how far generated LoRA weights are from the teacher's, in one of three spaces.

- ``tokens``: DnD's loss — both adapters through the :class:`LoraTokenizer` (per-chunk standardised
  tokens + mean/log-std border), MSE per token, optionally weighted by the teachers' per-token spread.
- ``slots``: plain MSE over every A and B entry, divided by the teachers' mean Σ‖A‖²+‖B‖².
- ``product``: MSE over the adapters' weight updates ΔW = s·B·A of every slot, divided by the teachers'
  mean Σ‖ΔW‖² — invariant to the (A, B) → (GA, BG⁻¹) ambiguity, which matters when the teachers start
  from different random A (the zoo's seeds do): raw A/B MSE then pulls A towards the teachers' mean,
  which is ≈ 0. Computed without forming ΔW: for U = [B₁, −B₂], V = [A₁; A₂], ‖UV‖²_F = Σ (UᵀU) ⊙ (VVᵀ).

The normalised losses are 1.0 for an all-zero prediction (``slots``, ``product``), so λ is scale-free.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..deltas.analyze import remove_shared
from ..generators.tokenizer import LoraTokenizer, criterion_weights, weighted_token_mse
from ..lora import LoraWeights


def product_sq_norm(w1: LoraWeights, w2: LoraWeights | None = None) -> torch.Tensor:
    """Σ_slots ‖s₁·B₁A₁ − s₂·B₂A₂‖²_F per adapter ([K]) of two batched LoraWeights (w2=None: ‖s₁·B₁A₁‖²).

    Each side keeps its own rank and scale (a rank-concatenated mixture against rank-r teachers)."""
    s1 = float(w1.layout.scale)
    total = None
    for slot in w1.layout.slots:
        a1, b1 = w1.A[slot.key].float(), w1.B[slot.key].float() * s1
        if w2 is None:
            u, v = b1, a1
        else:
            u = torch.cat([b1, -float(w2.layout.scale) * w2.B[slot.key].float()], dim=-1)  # [K, out, r₁+r₂]
            v = torch.cat([a1, w2.A[slot.key].float()], dim=-2)  # [K, r₁+r₂, in]
        g = (u.transpose(-1, -2) @ u) * (v @ v.transpose(-1, -2))
        term = g.sum(dim=(-2, -1))
        total = term if total is None else total + term
    return total


def product_inner(w1: LoraWeights, w2: LoraWeights) -> torch.Tensor:
    """Σ_slots ⟨ΔW₁, ΔW₂⟩ per adapter pair of two batches ([K]); no ΔW formed (⟨a, b⟩ = (‖a‖² + ‖b‖² − ‖a − b‖²)/2)."""
    return (product_sq_norm(w1) + product_sq_norm(w2) - product_sq_norm(w1, w2)) / 2


def product_cosine(w1: LoraWeights, w2: LoraWeights) -> torch.Tensor:
    """ΔW cosine over every slot, ⟨ΔW₁, ΔW₂⟩ / (‖ΔW₁‖ ‖ΔW₂‖), per adapter pair of two batches ([K])."""
    return product_inner(w1, w2) / (product_sq_norm(w1) * product_sq_norm(w2)).sqrt().clamp_min(1e-30)


def cosines_to_mean(adapters: Sequence[LoraWeights], group: Sequence[LoraWeights]) -> list[float]:
    """ΔW cosine of each adapter to the mean ΔW of ``group`` (single adapters): ⟨w, mean⟩ = mean_i ⟨w, T_i⟩ and
    ‖mean‖² = mean_ij ⟨T_i, T_j⟩ (computed once), so the mean (whose rank may exceed r) is never formed."""
    n = len(group)
    stack = LoraWeights.stack(list(group))
    gram = sum(float(product_inner(LoraWeights.stack([t] * n), stack).sum()) for t in group)
    mean_norm = (max(gram, 0.0) / n / n) ** 0.5
    out = []
    for w in adapters:
        inner = float(product_inner(LoraWeights.stack([w] * n), stack).mean())
        norm = float(product_sq_norm(LoraWeights.stack([w]))[0]) ** 0.5
        out.append(inner / max(norm * mean_norm, 1e-30))
    return out


def slot_sq_norm(w1: LoraWeights, w2: LoraWeights | None = None) -> torch.Tensor:
    """Σ_slots ‖A₁−A₂‖² + ‖B₁−B₂‖² per adapter ([K])."""
    total = None
    for slot in w1.layout.slots:
        da, db = w1.A[slot.key].float(), w1.B[slot.key].float()
        if w2 is not None:
            da, db = da - w2.A[slot.key].float(), db - w2.B[slot.key].float()
        term = da.square().flatten(1).sum(1) + db.square().flatten(1).sum(1)
        total = term if total is None else total + term
    return total


class WeightLoss:
    """L_weights of one kind, with its normalisation (or token weights) fitted once on the training teachers."""

    def __init__(self, kind: str, teachers: LoraWeights, token_weighting: bool = True):
        if kind not in ("tokens", "slots", "product"):
            raise ValueError(f"unknown weight loss {kind!r}; use tokens, slots or product")
        self.kind = kind
        self.scale = 1.0
        self.tokenizer = None
        self.token_weights = None
        with torch.no_grad():
            if kind == "tokens":
                self.tokenizer = LoraTokenizer(teachers.layout)
                if token_weighting and teachers.num_adapters and teachers.num_adapters >= 2:
                    self.token_weights = criterion_weights(self.tokenizer.tokenize(teachers))
            else:
                norm = product_sq_norm if kind == "product" else slot_sq_norm
                self.scale = max(float(norm(teachers).mean()), 1e-12)

    def to(self, device) -> WeightLoss:
        if self.tokenizer is not None:
            self.tokenizer = self.tokenizer.to(device)
        if self.token_weights is not None:
            self.token_weights = self.token_weights.to(device)
        return self

    @torch.no_grad()
    def floor(self, teachers: LoraWeights, groups: Sequence[str]) -> float:
        """The lowest mean L_weights any generator can reach on ``teachers`` if it sees only which group (task) a
        teacher belongs to: every teacher predicted by its group's minimiser in this loss's space — the mean tokens
        (``tokens``), the mean A and B (``slots``), the mean ΔW (``product``; possibly above rank r, so a bound).

        Teachers of one task differ only by data order and seed; that spread is what no condition can explain.
        A generator's tail L_weights is judged against this value, not against zero.
        """
        if len(groups) != teachers.num_adapters:
            raise ValueError(f"{len(groups)} groups for {teachers.num_adapters} teachers")
        members: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        if self.kind == "tokens":
            tokens = self.tokenizer.tokenize(teachers)
            means = torch.empty_like(tokens)
            for ids in members.values():
                means[ids] = tokens[ids].mean(0)
            return float(weighted_token_mse(means, tokens, self.token_weights))
        if self.kind == "slots":
            mean_a, mean_b = {}, {}
            for key in teachers.A:
                mean_a[key], mean_b[key] = torch.empty_like(teachers.A[key]), torch.empty_like(teachers.B[key])
                for ids in members.values():
                    mean_a[key][ids] = teachers.A[key][ids].mean(0)
                    mean_b[key][ids] = teachers.B[key][ids].mean(0)
            return float(self(LoraWeights(teachers.layout, mean_a, mean_b), teachers))
        # product: Σ_t ‖ΔW_t − m‖² over a group of n = Σ_t ‖ΔW_t‖² − n‖m‖², with
        # n²‖m‖² = Σ_{s,t} ⟨ΔW_s, ΔW_t⟩ and ⟨a, b⟩ = (‖a‖² + ‖b‖² − ‖a − b‖²) / 2 (no ΔW is formed)
        sq = product_sq_norm(teachers)
        total = 0.0
        for ids in members.values():
            n = len(ids)
            left = [i for i in ids for _ in ids]
            right = [j for _ in ids for j in ids]
            diff = product_sq_norm(_pick(teachers, left), _pick(teachers, right))
            gram = (sq[left] + sq[right] - diff) / 2
            total += float(sq[ids].sum() - gram.sum() / n)
        return total / teachers.num_adapters / self.scale

    def __call__(self, pred: LoraWeights, target: LoraWeights) -> torch.Tensor:
        if self.kind == "tokens":
            return weighted_token_mse(
                self.tokenizer.tokenize(pred), self.tokenizer.tokenize(target), self.token_weights
            )
        norm = product_sq_norm if self.kind == "product" else slot_sq_norm
        return norm(pred, target).mean() / self.scale


def _pick(weights: LoraWeights, rows: Sequence[int]) -> LoraWeights:
    """Adapters ``rows`` of a batch (repeats allowed), as a batch."""
    return LoraWeights(
        weights.layout, {k: v[rows] for k, v in weights.A.items()}, {k: v[rows] for k, v in weights.B.items()}
    )


def head(weights: LoraWeights, m: int) -> LoraWeights:
    """The first ``m`` adapters of a batched LoraWeights (a view: gradients flow)."""
    return LoraWeights(
        weights.layout, {k: v[:m] for k, v in weights.A.items()}, {k: v[:m] for k, v in weights.B.items()}
    )


DELTA_LOSSES = ("mse", "cosine", "specific_cosine")


def delta_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str, scale: float = 1.0, shared: torch.Tensor | None = None
) -> torch.Tensor:
    """L_Δ over a [K, dim] batch: ``mse`` = mean ‖Δ_pred − Δ_teacher‖² / ``scale`` (pass the teachers' mean
    ‖Δ‖², so 1.0 means "as far as predicting zero"), ``cosine`` = mean (1 − cos), ``specific_cosine`` =
    mean (1 − cos) after projecting ``shared`` (the training teachers' mean Δ) out of both sides."""
    if kind == "mse":
        return (pred - target).square().sum(-1).mean() / scale
    if kind == "cosine":
        return (1.0 - torch.nn.functional.cosine_similarity(pred, target, dim=-1, eps=1e-8)).mean()
    if kind == "specific_cosine":
        if shared is None:
            raise ValueError("specific_cosine needs shared= (the training teachers' mean Δ)")
        c = shared.to(pred)
        return (
            1.0
            - torch.nn.functional.cosine_similarity(remove_shared(pred, c), remove_shared(target, c), dim=-1, eps=1e-8)
        ).mean()
    raise ValueError(f"unknown delta loss {kind!r}; use one of {', '.join(DELTA_LOSSES)}")


def cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row cosine similarity of two [K, dim] batches (no gradient)."""
    return torch.nn.functional.cosine_similarity(pred.detach().float(), target.detach().float(), dim=-1, eps=1e-8)


__all__ = [
    "DELTA_LOSSES",
    "WeightLoss",
    "cosine",
    "delta_loss",
    "head",
    "cosines_to_mean",
    "product_cosine",
    "product_inner",
    "product_sq_norm",
    "slot_sq_norm",
]
