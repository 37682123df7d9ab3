"""Phase 3 of the method: train a generator on teacher weights and (behavioural matching) teacher Δ.

``data`` holds the teachers (a zoo's adapters, their conditions and cached Δ) and the leave-tasks-out split;
``losses`` the weight and Δ losses; ``loop`` the one training loop.
"""

from .config import LambdaSchedule, TrainConfig
from .data import (
    DatasetError,
    TeacherBatch,
    TeacherDataset,
    TeacherExample,
    choose_heldout,
    choose_seen,
    collate_teachers,
    components,
    split_entries,
    zoo_tasks,
)
from .loop import GENERATOR_NAME, LOG_NAME, TrainResult, lr_at, train_generator
from .losses import DELTA_LOSSES, WeightLoss, cosine, delta_loss, product_sq_norm

__all__ = [
    "DELTA_LOSSES",
    "GENERATOR_NAME",
    "LOG_NAME",
    "DatasetError",
    "LambdaSchedule",
    "TeacherBatch",
    "TeacherDataset",
    "TeacherExample",
    "TrainConfig",
    "TrainResult",
    "WeightLoss",
    "choose_heldout",
    "choose_seen",
    "collate_teachers",
    "components",
    "cosine",
    "delta_loss",
    "lr_at",
    "product_sq_norm",
    "split_entries",
    "train_generator",
    "zoo_tasks",
]
