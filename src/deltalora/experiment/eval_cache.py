"""The run's eval cache: every candidate adapter's score on a held-out task, one JSON file each.

``<run>/eval/<task>/<key>.json``, the key the candidate's content hash salted with everything else its
score depends on (task, split, item limit, backbone weights and, unless float32, the evaluator's
precision): a rerun reuses every score, and a changed setting scores again instead of reading a stale one.
A score is the candidate's accuracy and its per-item scores (``scores``, what the report's paired bootstrap
resamples); an entry cached before per-item scores were kept counts as a miss, so that candidate is scored again.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..backbones import decide_precision
from ..lora import LoraWeights, weights_hash
from ..paths import atomic_write_bytes
from .config import EvalConfig


class EvalCache:
    """The scores of one held-out task's candidates under ``run_dir/eval/<task>/``."""

    def __init__(self, run_dir: Path, task: str, ev: EvalConfig, backbone) -> None:
        salt = f"{task}|{ev.split}|{ev.limit}|{backbone.weights_id}"
        if ev.precision != "float32":  # float32 scores keep the keys they were cached under before the option existed
            salt += f"|{decide_precision(ev.precision, backbone.device).name}"
        self.salt = salt
        self.folder = Path(run_dir) / "eval" / task

    def key(self, weights: LoraWeights | None) -> str:
        """The cache key of a candidate (``None``: the base model)."""
        return weights_hash(weights, self.salt)

    def get(self, key: str) -> dict | None:
        """The stored score, or None when this candidate has not been scored under these settings or its entry has
        no per-item scores (written before they were kept: scoring it again is what the report needs)."""
        path = self.folder / f"{key}.json"
        if not path.exists():
            return None
        entry = json.loads(path.read_text())
        return entry if isinstance(entry.get("scores"), list) else None

    def put(self, key: str, result: dict) -> None:
        atomic_write_bytes(self.folder / f"{key}.json", json.dumps(result).encode())


__all__ = ["EvalCache"]
