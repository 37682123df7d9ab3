"""Reading a generator's ``log.jsonl``: one record per step, the last write of a step winning.

A resumed run truncates its log to the checkpoint's step and rewrites the rest, and a kill can leave a torn
last line; every reader (the report's curves, the run's step times, the ablation table) goes through
:func:`read_log` so they all see the same records.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

LogCurves = dict[int, dict[str, Any]]  # step -> that step's last log record


def read_log(path: str | Path) -> LogCurves:
    """A JSONL training log as step -> record, in step order; unparsable lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log {path} does not exist")
    curves: LogCurves = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line after a kill, or noise
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            curves[rec["step"]] = rec
    return dict(sorted(curves.items()))


def series(curves: LogCurves, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key``, skipping steps where it is null (before the Δ loss starts, say) or not finite."""
    pts = [
        (s, float(r[key])) for s, r in curves.items() if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def values(curves: LogCurves, key: str) -> list[float]:
    """``key`` of every step where it is a finite number."""
    return series(curves, key)[1]


def tail_mean(curves: LogCurves, key: str, frac: float = 0.1) -> float | None:
    """Mean of ``key`` over the last ``frac`` of the steps (at least one) that have it; None when none do.

    One step's loss is one batch's; the tail mean is what a table of "final" losses should quote.
    """
    vals = values(curves, key)
    return float(np.mean(vals[-max(1, round(len(vals) * frac)) :])) if vals else None


__all__ = ["LogCurves", "read_log", "series", "tail_mean", "values"]
