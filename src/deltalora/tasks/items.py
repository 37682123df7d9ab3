"""The task data model: items, tasks, and how a prediction is scored.

A :class:`Task` holds three disjoint splits of :class:`TaskItem`:

- ``train``: what a teacher adapter is fitted on;
- ``condition``: prompts shown to a generator as its condition;
- ``eval``: held-out items that accuracy is measured on.

Answer conventions, per ``kind``:

- ``"short"``: ``answer`` is the gold text; ``meta["targets"]`` (optional) lists every acceptable answer.
- ``"mc"``: ``choices`` lists the options, ``answer`` is the gold choice *text* and ``meta["gold_index"]`` its
  index in ``choices``. Callers that score by log-likelihood compare ``argmax == item.gold_index``.
- ``"code"``: ``answer`` is the reference solution; ``meta["problem"]`` is the full HumanEval problem dict
  (``prompt``, ``test``, ``entry_point`` ...). Execution scoring is not implemented yet.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import DeltaLoraError
from ..registry import Registry

Kind = Literal["mc", "short", "code"]
KINDS: tuple[str, ...] = ("mc", "short", "code")
SPLITS: tuple[str, ...] = ("train", "condition", "eval")


class TaskError(DeltaLoraError):
    """A task source, data file or task name is invalid, missing or cannot be fetched."""


@dataclass(slots=True)
class TaskItem:
    prompt: str  # the raw question text, no chat framing
    answer: str  # the gold answer text (for mc: the gold choice's text)
    choices: list[str] | None = None  # mc only
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able

    @property
    def gold_index(self) -> int:
        """Index of the gold choice in ``choices`` (mc items only)."""
        if self.choices is None:
            raise ValueError("gold_index is defined for multiple-choice items only")
        return int(self.meta["gold_index"])

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"prompt": self.prompt, "answer": self.answer}
        if self.choices is not None:
            d["choices"] = list(self.choices)
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskItem:
        return cls(d["prompt"], d["answer"], d.get("choices"), dict(d.get("meta") or {}))


def mc_item(prompt: str, choices: list[str], gold_index: int, **meta: Any) -> TaskItem:
    """A multiple-choice item with the gold stored both as text (``answer``) and as ``meta["gold_index"]``."""
    return TaskItem(prompt, choices[gold_index], list(choices), {"gold_index": gold_index, **meta})


_TRAILING_PUNCT = re.compile(r"[\s.,!?;:]+$")


def normalise(text: str) -> str:
    """Comparison form of a short answer: collapse whitespace, lowercase, drop trailing punctuation."""
    return _TRAILING_PUNCT.sub("", " ".join(str(text).split()).lower())


def prompt_key(text: str) -> str:
    """The form two prompts are compared in when deduplicating (whitespace-collapsed, lowercased)."""
    return " ".join(text.split()).lower()


# ---- scorers: name -> fn(task, item, prediction) -> float in [0, 1] ------------------------------------

Scorer = Callable[["Task", TaskItem, Any], float]
_SCORERS = Registry("scorer")


def register_scorer(name: str):
    return _SCORERS.register(name)


@register_scorer("exact")
def score_exact(task: Task, item: TaskItem, prediction: Any) -> float:
    """Normalised exact match against ``meta["targets"]`` (any of them) or ``answer``."""
    targets = item.meta.get("targets") or [item.answer]
    pred = normalise(str(prediction))
    return float(any(pred == normalise(t) for t in targets))


@register_scorer("mc")
def score_mc(task: Task, item: TaskItem, prediction: Any) -> float:
    """``prediction`` is the chosen index (the argmax over choices) or the chosen choice's text."""
    if isinstance(prediction, int) and not isinstance(prediction, bool):
        return float(prediction == item.gold_index)
    return float(normalise(str(prediction)) == normalise(item.answer))


@register_scorer("code")
def score_code(task: Task, item: TaskItem, prediction: Any) -> float:
    raise NotImplementedError(
        f"task {task.name!r}: execution scoring of code is not implemented yet; "
        "the HumanEval problem (with its tests) is in item.meta['problem']"
    )


@dataclass
class Task:
    name: str
    family: str
    kind: Kind
    description: str
    source: str
    source_args: dict[str, Any]
    train: list[TaskItem]
    condition: list[TaskItem]
    eval: list[TaskItem]
    scorer: str = "exact"

    def split(self, name: str) -> list[TaskItem]:
        if name not in SPLITS:
            raise TaskError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def score(self, item: TaskItem, prediction: Any) -> float:
        """1.0 if ``prediction`` is correct for ``item`` (reasoning-gym may give partial credit), else 0.0."""
        return _SCORERS[self.scorer](self, item, prediction)

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in SPLITS}

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("name", "family", "kind", "description", "source", "source_args", "scorer")}
        for s in SPLITS:
            d[s] = [it.to_dict() for it in getattr(self, s)]
        return d


def constant_answer_score(task: Task, items: Sequence[TaskItem]) -> tuple[float, Any]:
    """The best mean score on ``items`` of a predictor that ignores the prompt and always gives one answer (the
    majority-label baseline), and that answer: for mc a choice index, otherwise one of the items' gold texts (or
    targets), scored with the task's own scorer. A teacher that only learns the commonest answer reaches this
    score and no more. ``(0.0, None)`` for no items."""
    if not items:
        return 0.0, None
    if task.kind == "mc":
        candidates: list[Any] = list(range(max(len(it.choices or []) for it in items)))
    else:
        candidates = list(dict.fromkeys(t for it in items for t in (it.meta.get("targets") or [it.answer])))
    totals = {i: sum(task.score(it, c) for it in items) for i, c in enumerate(candidates)}
    best = max(totals, key=totals.__getitem__)  # the first of the best: the result does not depend on dict order
    return totals[best] / len(items), candidates[best]
