"""Evaluate a backbone by name, and adapters by directory, with either evaluator: deltalora's own on a suite task or
a data file, or lm-eval's harness on its tasks. Every option is checked before the backbone loads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backbones import load_backbone
from ..backbones.precision import canonical_precision
from ..config import RuntimeConfig, model_validate_or_raise
from ..errors import ConfigError
from ..tasks import build_task, get_spec, load_suite
from .lm_eval_backend import _import_lm_eval, evaluate_lm_eval
from .runner import evaluate_task, load_arms, task_from_file

BACKENDS = ("native", "lm-eval")


def evaluate_backbone(
    backbone: str,
    adapters: Sequence[str | Path] = (),
    task: str | None = None,
    data: str | Path | None = None,
    split: str = "eval",
    suite: str | Path | None = None,
    seed: int = 0,
    limit: int | None = None,
    batch_rows: int = 32,
    device: str = "auto",
    dtype: str = "float32",
    precision: str = "float32",
    backend: str = "native",
    lm_eval_include: str | Path | None = None,
    num_fewshot: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Scores of the base model and each adapter, with ``backbone`` (the name given) added to the result.

    ``backend="native"``: exactly one of ``task`` (a suite task, its ``split`` cut with ``seed``) or ``data`` (every
    item of a JSONL / DnD JSON file), computed in ``precision``; see :func:`~deltalora.eval.evaluate_task`.
    ``backend="lm-eval"``: ``task`` is a comma-separated list of lm-eval tasks (``lm_eval_include``: a directory of
    task YAMLs); see :func:`~deltalora.eval.lm_eval_backend.evaluate_lm_eval`.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: use native or lm-eval")
    if backend == "lm-eval":
        if data is not None or task is None:
            raise ConfigError("--backend lm-eval scores lm-eval tasks: pass --task NAME[,NAME...] (not --data)")
        _import_lm_eval()  # a missing extra is reported before the backbone loads
        names = [t.strip() for t in task.split(",") if t.strip()]
    else:
        try:
            canonical_precision(precision)
        except ValueError as exc:
            raise ConfigError(f"--precision: {exc}") from None
        if lm_eval_include is not None or num_fewshot is not None:
            raise ConfigError("--lm-eval-include and --num-fewshot belong to --backend lm-eval")
        if (task is None) == (data is None):
            raise ConfigError("pass exactly one of --task NAME or --data FILE")
        t = task_from_file(data) if data is not None else build_task(get_spec(load_suite(suite), task), seed=seed)
    runtime = model_validate_or_raise(RuntimeConfig, {"device": device, "dtype": dtype}, "runtime options")
    b = load_backbone(backbone, runtime, progress=progress)
    arms = load_arms(b, list(adapters))
    if backend == "lm-eval":
        res = evaluate_lm_eval(
            b, arms, names, include_path=lm_eval_include, limit=limit, batch_size=batch_rows, num_fewshot=num_fewshot
        )
    else:
        res = evaluate_task(
            b, t, arms, split=split if data is None else "eval", limit=limit, batch_rows=batch_rows, precision=precision
        )
    res["backbone"] = backbone
    return res


__all__ = ["BACKENDS", "evaluate_backbone"]
