"""The optional lm-evaluation-harness backend (``pip install 'deltalora[lm-eval]'``).

For users who already score with lm-eval: the backbone is loaded once (our loader, so packaged weights and
device / dtype configuration work as everywhere else), wrapped in lm-eval's ``HFLM``, and each arm runs the
requested lm-eval tasks with its adapter hooked in by :func:`deltalora.lora.inject` (no merge, no reload, the
base weights never change). Tasks are lm-eval task names, including tasks defined by YAML files in
``include_path`` (lm-eval's own mechanism for local tasks; e.g. ``dataset_path: json`` over local files).

    deltalora eval --backend lm-eval --backbone NAME --adapter DIR --task my_task --lm-eval-include tasks/ --json
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import ConfigError
from ..lora import LoraWeights, inject

EXTRA_HINT = "the lm-eval backend needs the [lm-eval] extra: pip install 'deltalora[lm-eval]' (lm_eval==0.4.13)"


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(EXTRA_HINT) from None
    return lm_eval, HFLM, TaskManager


def _metrics(block: Mapping) -> dict:
    """``{"acc": 0.5, "acc_stderr": 0.1, ...}`` from lm-eval's ``{"acc,none": ..., "acc_stderr,none": ...}``."""
    out = {}
    for key, value in block.items():
        if key == "alias" or not isinstance(value, (int, float)):
            continue
        name, _, filt = key.partition(",")
        name = name if filt in ("", "none") else f"{name}[{filt}]"
        out[name] = None if isinstance(value, float) and math.isnan(value) else float(value)
    return out


def evaluate_lm_eval(
    backbone,
    arms: Mapping[str, LoraWeights | None],
    tasks: Sequence[str],
    include_path: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    keep_samples: bool = False,
) -> dict:
    """``{"backend": "lm-eval", "tasks", "arms": {arm: {task: {metric: value}}}, "n": {task: items}, "seconds"}``;
    with ``keep_samples`` also ``"samples": {arm: {task: [per-item responses]}}`` (log-likelihoods or texts)."""
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    if not tasks:
        raise ConfigError(
            "no lm-eval task given; pass --task NAME (an lm-eval task, or one defined in --lm-eval-include DIR)"
        )
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"{include_path}: --lm-eval-include must be a directory of lm-eval task YAML files")
    manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {include_path}" if include_path is not None else ""
        raise ConfigError(
            f"unknown lm-eval task(s) {unknown}: not a task lm-eval ships{where}; check the name (`lm-eval ls tasks`)"
        )
    lm = HFLM(pretrained=backbone.model, tokenizer=backbone.tokenizer, batch_size=batch_size)
    t0 = time.perf_counter()
    result: dict = {
        "backend": "lm-eval",
        "lm_eval_version": lm_eval.__version__,
        "tasks": list(tasks),
        "arms": {},
        "n": {},
    }
    if keep_samples:
        result["samples"] = {}
    for name, w in arms.items():
        ctx = inject(backbone.model, w.to(backbone.device)) if w is not None else contextlib.nullcontext()
        with ctx:
            res = lm_eval.simple_evaluate(
                model=lm,
                tasks=list(tasks),
                task_manager=manager,
                limit=limit,
                num_fewshot=num_fewshot,
                log_samples=keep_samples,
                bootstrap_iters=0,
                verbosity="ERROR",
            )
        result["arms"][name] = {t: _metrics(res["results"][t]) for t in tasks}
        for t in tasks:
            n = res.get("n-samples", {}).get(t, {})
            result["n"][t] = n.get("effective", n.get("original"))
        if keep_samples:
            result["samples"][name] = {t: [s["resps"] for s in res["samples"][t]] for t in tasks}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


__all__ = ["EXTRA_HINT", "evaluate_lm_eval"]
