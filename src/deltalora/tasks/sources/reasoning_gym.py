"""reasoning-gym generators (pinned ``reasoning-gym==0.1.25``): seeded, unlimited, with a verifier."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pydantic import Field

from ...config import StrictModel
from ..items import Task, TaskError, TaskItem, register_scorer
from ..registry import register_task_source


class ReasoningGymArgs(StrictModel):
    dataset: str = Field(min_length=1)  # the generator's name, e.g. "letter_counting"
    config: dict[str, Any] = Field(default_factory=dict)  # extra keyword arguments of its config


def _create(dataset: str, config: dict[str, Any], seed: int, size: int):
    import reasoning_gym

    try:
        return reasoning_gym.create_dataset(dataset, seed=seed, size=size, **config)
    except (KeyError, ValueError, TypeError) as exc:
        raise TaskError(
            f"reasoning-gym dataset {dataset!r} with config {config} cannot be created ({exc}); "
            "check the name and config keys against reasoning_gym.factory.DATASETS"
        ) from None


@lru_cache(maxsize=64)
def _scoring_dataset(dataset: str, config_json: str):
    """A dataset object only for its ``score_answer``: verifiers read the entry, not the seed."""
    return _create(dataset, json.loads(config_json), seed=0, size=1)


@register_task_source("reasoning_gym", args=ReasoningGymArgs, generator=True, scorer="reasoning_gym")
def _reasoning_gym(args: ReasoningGymArgs, *, name: str, kind: str, size: int, seed: int) -> list[TaskItem]:
    ds = _create(args.dataset, args.config, seed=seed % (2**31), size=size)
    items = []
    for i in range(size):
        entry = ds[i]
        if entry.get("answer") is None:  # e.g. propositional_logic: no single gold answer to train on
            continue
        # JSON round-trip so the item is exactly what a cache would give back.
        metadata = json.loads(json.dumps(entry.get("metadata", {}), default=str))
        items.append(TaskItem(entry["question"], str(entry["answer"]), None, {"metadata": metadata}))
    return items


@register_scorer("reasoning_gym")
def score_reasoning_gym(task: Task, item: TaskItem, prediction: Any) -> float:
    """The generator's own verifier (``score_answer``); a verifier that raises on junk scores 0."""
    args = ReasoningGymArgs.model_validate(task.source_args)
    ds = _scoring_dataset(args.dataset, json.dumps(args.config, sort_keys=True))
    entry = {"question": item.prompt, "answer": item.answer, "metadata": item.meta.get("metadata", {})}
    try:
        return float(ds.score_answer(str(prediction), entry))
    except Exception:  # noqa: BLE001 - third-party verifiers raise arbitrary errors on malformed answers
        return 0.0
