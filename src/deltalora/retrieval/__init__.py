"""Retrieval baselines: a Δ predictor, an index over the training teachers, top-k retrieval and a merge.

pred, log = fit_delta_predictor(train_set, steps=300)
index = build_index(train_set, pred, info=log)
adapter, hits = retrieve_adapter(index, condition, by="delta", k=3, merge="ties")
"""

from .index import BY, Hit, RetrievalError, RetrievalIndex, build_index
from .predictor import LOSSES, DeltaPredictor, fit_delta_predictor, predictor_cosines
from .retrieve import retrieve_adapter, retrieve_to_dir

__all__ = [
    "BY",
    "LOSSES",
    "DeltaPredictor",
    "Hit",
    "RetrievalError",
    "RetrievalIndex",
    "build_index",
    "fit_delta_predictor",
    "predictor_cosines",
    "retrieve_adapter",
    "retrieve_to_dir",
]
