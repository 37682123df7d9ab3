"""The Δ predictor g(condition) → Δ̂: a small MLP on the mean condition embedding, trained on the training
teachers' cached Δ with the shared direction (their mean Δ) projected out — the task-specific part of the shift
is what tells teachers apart, and what retrieval ranks by.

    pred, log = fit_delta_predictor(train_set, steps=300, loss="cosine", seed=0)
    cos = predictor_cosines(pred, conditions, teacher_deltas, train_set.mean_delta())   # held-out fit
"""

from __future__ import annotations

import random

import torch
from torch import nn

from ..deltas.analyze import remove_shared
from ..errors import ConfigError
from ..tasks import stable_seed

LOSSES = ("cosine", "mse")


class DeltaPredictor(nn.Module):
    """[K, n_prompts, cond_dim] conditions → [K, delta_dim]: mean over prompts, LayerNorm, MLP."""

    def __init__(self, cond_dim: int, delta_dim: int, hidden: int = 256):
        super().__init__()
        self.cond_dim, self.delta_dim, self.hidden = int(cond_dim), int(delta_dim), int(hidden)
        self.net = nn.Sequential(
            nn.LayerNorm(self.cond_dim),
            nn.Linear(self.cond_dim, self.hidden),
            nn.GELU(),
            nn.Linear(self.hidden, self.delta_dim),
        )

    def config(self) -> dict:
        return {"cond_dim": self.cond_dim, "delta_dim": self.delta_dim, "hidden": self.hidden}

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        return self.net(conditions.float().mean(dim=-2))


def _loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cosine":
        return 1 - nn.functional.cosine_similarity(pred, target, dim=-1).mean()
    return ((pred - target) ** 2).sum(-1).mean() / (target**2).sum(-1).mean().clamp_min(1e-30)


def fit_delta_predictor(
    train_set,
    *,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 1e-3,
    hidden: int = 256,
    loss: str = "cosine",
    seed: int = 0,
) -> tuple[DeltaPredictor, dict]:
    """Train a :class:`DeltaPredictor` on ``train_set`` (a TeacherDataset): each step draws ``batch_size`` teachers
    and a fresh condition for each (the prompts a generator of that seed would see), and regresses the teacher's
    Δ with the training mean projected out. Returns the predictor (eval mode) and a log: the loss curve and the
    final training cosine. Deterministic in ``seed``."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown Δ predictor loss {loss!r}; use one of {', '.join(LOSSES)}")
    if steps < 1 or batch_size < 1 or hidden < 1 or not lr > 0:
        raise ConfigError(f"Δ predictor: steps, batch_size, hidden and lr must be positive, got {steps, batch_size}")
    torch.manual_seed(stable_seed("delta-predictor", seed) % (2**63))
    shared = train_set.mean_delta()
    targets = remove_shared(train_set.deltas, shared)
    pred = DeltaPredictor(train_set.cond_dim, train_set.delta_dim, hidden)
    opt = torch.optim.AdamW(pred.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(stable_seed("delta-predictor-batches", seed))
    curve = []
    n = len(train_set)
    for step in range(steps):
        idx = [rng.randrange(n) for _ in range(min(batch_size, n))]
        cond = torch.stack([train_set.example(i, step).condition for i in idx])
        value = _loss(pred(cond), targets[idx], loss)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        curve.append(float(value.detach()))
    pred.eval()
    with torch.no_grad():
        cond = torch.stack([train_set.example(i, steps).condition for i in range(n)])
        fit = nn.functional.cosine_similarity(pred(cond), targets, dim=-1)
    tail = curve[-max(1, steps // 10) :]
    log = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "hidden": hidden,
        "loss": loss,
        "seed": seed,
        "curve": curve,
        "tail_loss": sum(tail) / len(tail),
        "train_cosine": float(fit.median()),
    }
    return pred, log


@torch.no_grad()
def predictor_cosines(
    pred: DeltaPredictor, conditions: torch.Tensor, deltas: torch.Tensor, shared: torch.Tensor
) -> list[float]:
    """Task-specific Δ-cosine of the predictions for ``conditions`` [K, n, dim] to the true ``deltas`` [K, D]."""
    got = remove_shared(pred(conditions), shared)
    return nn.functional.cosine_similarity(got, remove_shared(deltas, shared), dim=-1).tolist()


__all__ = ["LOSSES", "DeltaPredictor", "fit_delta_predictor", "predictor_cosines"]
