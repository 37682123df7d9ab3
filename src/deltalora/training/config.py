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

    # L = weight_scale·L_weights + λ(t)·L_Δ + kl(t)·L_KL + norm_penalty·‖ΔW‖² (B1 Δ-only: weight_scale 0)
    weight_scale: float = Field(1.0, ge=0)
    kl: LambdaSchedule = LambdaSchedule()  # KL(teacher ‖ generated) on the answer tokens of the teacher's task probes
    kl_probes: str = "task:train:8"  # the items the KL is taken on (task probes: each teacher's own task)
    kl_answer_tokens: int = Field(16, ge=1)  # answer tokens scored per item
    norm_penalty: float = Field(0.0, ge=0)  # μ on Σ‖ΔW‖² of the generated adapter / the teachers' mean

    log_every: int = Field(1, ge=1)
    save_every: int = Field(25, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.delta_batch > self.batch_size:
            raise ValueError(f"delta_batch ({self.delta_batch}) cannot exceed batch_size ({self.batch_size})")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        if not self.kl_probes.startswith("task:"):
            raise ValueError(f"kl_probes must be task probes (task:train:N), got {self.kl_probes!r}")
        if self.weight_scale == 0 and not (self.uses_delta or self.uses_kl):
            raise ValueError("weight_scale 0 leaves no loss: set lam.target or kl.target > 0 (B1: Δ-only training)")
        return self

    @property
    def uses_delta(self) -> bool:
        return self.lam.target > 0

    @property
    def uses_kl(self) -> bool:
        return self.kl.target > 0


# Fields added after runs were fingerprinted: left out of a fingerprint while at these defaults, so those runs resume.
LATER_DEFAULTS: dict[str, Any] = {
    "weight_scale": 1.0,
    "kl": {"target": 0.0, "warmup_steps": 0, "ramp_steps": 0},
    "kl_probes": "task:train:8",
    "kl_answer_tokens": 16,
    "norm_penalty": 0.0,
}


__all__ = ["LATER_DEFAULTS", "LambdaSchedule", "TrainConfig"]
