"""Phase 3 of the method: train a generator on teacher weights and (behavioural matching) teacher Δ."""

from .config import LambdaSchedule, TrainConfig
from .delta import DeltaProbe, cosine, delta_loss, remove_shared
from .loop import GENERATOR_NAME, LOG_NAME, TrainResult, lr_at, train_generator
from .losses import WeightLoss, product_sq_norm

__all__ = [
    "GENERATOR_NAME", "LOG_NAME", "DeltaProbe", "LambdaSchedule", "TrainConfig", "TrainResult", "WeightLoss",
    "cosine", "delta_loss", "remove_shared", "lr_at", "product_sq_norm", "train_generator",
]
