"""The generator-training config: one typed model for every preset (``configs/*.yaml`` → ``train:``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import StrictModel


class LambdaSchedule(StrictModel):
    """λ(t) of L = L_weights + λ(t)·L_Δ: 0 for ``warmup_steps`` steps, then a linear ramp to ``target``
    over ``ramp_steps`` steps (0 = jump straight to it), then constant."""

    target: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    ramp_steps: int = Field(0, ge=0)

    def at(self, step: int) -> float:
        """λ at (0-based) optimisation step ``step``."""
        if self.target == 0.0 or step < self.warmup_steps:
            return 0.0
        if self.ramp_steps == 0:
            return float(self.target)
        return float(self.target) * min(1.0, (step - self.warmup_steps + 1) / self.ramp_steps)


class TrainConfig(StrictModel):
    """What a generator is and how it is trained. Sizes of everything else come from the backbone and zoo."""

    generator: str = "compact"
    generator_options: dict[str, Any] = Field(default_factory=dict)
    encoder: str = "minilm"  # condition encoder (deltalora.conditions registry name, HF dir or id)
    n_prompts: int = Field(8, ge=1)
    condition_form: Literal["prompts", "prompt_answer"] = "prompts"

    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)  # teachers per step for L_weights (global, split over DDP ranks)
    delta_batch: int = Field(2, ge=1, le=64)  # teachers per step whose Δ is matched (a prefix of the batch)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(10, ge=0)  # linear LR warm-up, then cosine to min_lr_ratio·lr
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = Field(0, ge=0)

    weight_loss: Literal["tokens", "slots", "product"] = "product"
    token_weighting: bool = True  # tokens loss only: DnD's per-token criterion weights from the teachers' spread
    delta_loss: Literal["mse", "cosine", "specific_cosine"] = "mse"  # see training.losses.delta_loss
    lam: LambdaSchedule = LambdaSchedule()

    probes: str = "generic5"
    representation: str = "last_token"
    probe_dtype: Literal["float32", "bfloat16"] = "float32"  # dtype of the probe forward; Δ always in float32

    log_every: int = Field(1, ge=1)
    save_every: int = Field(25, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.delta_batch > self.batch_size:
            raise ValueError(f"delta_batch ({self.delta_batch}) cannot exceed batch_size ({self.batch_size})")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        return self

    @property
    def uses_delta(self) -> bool:
        return self.lam.target > 0


__all__ = ["LambdaSchedule", "TrainConfig"]
