"""Score the base model and adapters on a task split: accuracy with standard error and item counts.

Multiple choice: argmax over the summed log-likelihood of each choice's text as the continuation of
the formatted prompt. Short answer: greedy decoding, then the task's scorer. All arms (base and
every adapter) run in shared batches through :mod:`deltalora.eval.engine`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from ..backbones.precision import dtype_name, narrowed_linears, resolve_precision
from ..lora import LoraWeights, load_adapter
from ..tasks import Task, TaskError, format_prompt, read_dnd_json, read_jsonl
from .engine import choice_logprobs, greedy_generate

BASE = "base"


def max_new_tokens_for(task: Task, tokenizer, margin: int = 8, cap: int = 160) -> int:
    """Room for the longest answer seen in the train/condition splits (never the eval answers)."""
    seen = task.train + task.condition
    if not seen:
        return 64
    longest = max(len(tokenizer(it.answer, add_special_tokens=False)["input_ids"]) for it in seen)
    return min(cap, int(longest * 1.5) + margin)


def _summary(scores: list[float]) -> dict:
    """Mean, its standard error over items, the item count and the per-item scores (in item order: every arm of a
    call is scored on the same items, so arms can be compared item by item, e.g. by a paired bootstrap)."""
    n = len(scores)
    mean = sum(scores) / n
    var = sum((s - mean) ** 2 for s in scores) / max(1, n - 1)
    return {"accuracy": mean, "stderr": math.sqrt(var / n), "n": n, "scores": scores}


def evaluate_task(
    backbone,
    task: Task,
    arms: Mapping[str, LoraWeights | None],
    split: str = "eval",
    limit: int | None = None,
    batch_rows: int = 32,
    max_new_tokens: int | None = None,
    keep_predictions: bool = False,
    precision: str = "float32",
) -> dict:
    """``{"task", "kind", "split", "precision", "arms": {name: {"accuracy", "stderr", "n", "scores", ...}},
    "seconds"}``, ``scores`` the arm's per-item scores in the split's item order.

    ``precision`` (``float32`` | ``bfloat16`` | ``auto``, resolved by :func:`deltalora.backbones.decide_precision`)
    narrower than the weights runs every forward under autocast, with the linears cast once for the call: faster
    where the hardware has native bf16, at the cost of some predictions (``benchmarks/eval_speed.py --precision``
    measures the agreement with float32 per task). Compare rows only within one precision."""
    if task.kind == "code":
        raise TaskError(f"task {task.name}: code tasks need an execution scorer, which deltalora does not have yet")
    items = task.split(split)[: limit or None]
    if not items:
        raise TaskError(f"task {task.name}: split {split!r} is empty; nothing to evaluate")
    names = list(arms)
    weights = [arms[n] for n in names]
    prompts = [format_prompt(backbone.tokenizer, task, it) for it in items]
    t0 = time.perf_counter()
    wide = next(backbone.model.parameters()).dtype
    dtype = resolve_precision(precision, backbone.device)
    narrow = dtype.itemsize < wide.itemsize
    result: dict = {
        "task": task.name,
        "kind": task.kind,
        "split": split,
        "precision": dtype_name(dtype if narrow else wide),
        "arms": {},
    }
    with (
        narrowed_linears(backbone.model, dtype if narrow else None),
        torch.autocast(backbone.device.type, dtype=dtype, enabled=narrow),
    ):
        _score(backbone, task, items, prompts, names, weights, result, batch_rows, max_new_tokens, keep_predictions)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _score(
    backbone,
    task: Task,
    items,
    prompts,
    names,
    weights,
    result: dict,
    batch_rows: int,
    max_new_tokens: int | None,
    keep_predictions: bool,
) -> None:
    if task.kind == "mc":
        lp = choice_logprobs(backbone, prompts, [it.choices for it in items], weights, batch_rows=batch_rows)
        for a, name in enumerate(names):
            picks = [max(range(len(row)), key=row.__getitem__) for row in lp[a]]
            scores = [float(p == it.gold_index) for p, it in zip(picks, items)]
            result["arms"][name] = _summary(scores)
            if keep_predictions:
                result["arms"][name]["predictions"] = [items[i].choices[p] for i, p in enumerate(picks)]
    else:
        new = max_new_tokens or max_new_tokens_for(task, backbone.tokenizer)
        texts = greedy_generate(backbone, prompts, weights, max_new_tokens=new, batch_rows=batch_rows)
        for a, name in enumerate(names):
            scores = [float(task.score(it, text.strip())) for it, text in zip(items, texts[a])]
            result["arms"][name] = _summary(scores)
            if keep_predictions:
                result["arms"][name]["predictions"] = texts[a]
        result["max_new_tokens"] = new


def load_arms(backbone, adapter_dirs: list[str | Path], include_base: bool = True) -> dict[str, LoraWeights | None]:
    """The base model plus each adapter directory (validated against the backbone), keyed by name."""
    arms: dict[str, LoraWeights | None] = {BASE: None} if include_base else {}
    for d in adapter_dirs:
        name = str(d)
        if name in arms:
            raise TaskError(f"{d}: adapter given twice; pass each adapter directory once")
        arms[name] = load_adapter(d, arch=backbone.arch)
    layouts = {tuple(s.key for s in w.layout.slots) + (w.layout.scale,) for w in arms.values() if w is not None}
    if len(layouts) > 1:
        raise TaskError(
            "adapters with different layouts (targets, layers, rank or scale) cannot share a batch; evaluate them in "
            "separate calls"
        )
    return arms


def task_from_file(path: str | Path) -> Task:
    """Every item of a user file (JSONL short/MC, or DnD JSON) as the eval split of an ad-hoc task."""
    path = Path(path)
    if path.suffix == ".jsonl":
        kind, items = read_jsonl(path)
    else:
        kind, items = "short", read_dnd_json(path)
    return Task(
        name=path.stem,
        family="user",
        kind=kind,
        description=f"items of {path}",
        source="file",
        source_args={"path": str(path)},
        train=[],
        condition=[],
        eval=items,
        scorer="mc" if kind == "mc" else "exact",
    )
