"""Conditions, as in DnD: N texts sampled from a task's condition pool, encoded to ``[n_prompts, dim]``.

Two forms:

- ``"prompts"``: the prompts alone;
- ``"prompt_answer"``: ``prompt + "answer: " + response`` (DnD's concatenation, verbatim).

A :class:`ConditionPool` is the set of items a condition may be drawn from: a task's *condition* split
(never its train or eval items) or a prompt file. :class:`Conditioner` encodes every pool once (through
the embedding cache) and then samples: the prompts of one condition are a deterministic function of
``(seed, epoch, key)``, so each epoch shows a teacher different prompts (DnD resamples) while any run
with the same seed sees the same ones. Conditions stack to ``[K, n_prompts, dim]``.

Prompt files, validated where they enter (every problem is a one-line :class:`~deltalora.tasks.TaskError`
naming the file and the fix):

- JSONL, one object per line: ``{"prompt": str, "response": str}`` or ``{"prompt": str, "answer": str}``
  (the answer may be omitted for the prompts-only form; with ``"choices"`` an integer answer is an index);
- DnD / LLaMA-Factory JSON ``[{"prompt", "response", "system"}]`` (read by :func:`deltalora.tasks.read_dnd_json`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import DeltaLoraError
from ..tasks import Task, TaskError, TaskItem, read_dnd_json, stable_seed
from ..tasks.sources.userfiles import read_user_text
from .cache import EmbeddingCache, encode_texts
from .encoder import SentenceEncoder

Form = Literal["prompts", "prompt_answer"]
FORMS: tuple[str, ...] = ("prompts", "prompt_answer")
ANSWER_SEPARATOR = "answer: "


class ConditionError(DeltaLoraError):
    """A condition cannot be built (unknown form or pool, an answer missing for the prompt+answer form)."""


def condition_text(item: TaskItem, form: Form) -> str:
    """The text encoded for ``item``: its prompt, or ``prompt + "answer: " + answer``."""
    if form == "prompts":
        return item.prompt
    if form == "prompt_answer":
        return item.prompt + ANSWER_SEPARATOR + item.answer
    raise ConditionError(f"unknown condition form {form!r}; use one of {', '.join(FORMS)}")


# ------------------------------------------------------------------------------------------ files


def _answer(rec: dict, where: str) -> str:
    for key in ("response", "answer"):
        if key not in rec:
            continue
        val = rec[key]
        choices = rec.get("choices")
        if isinstance(val, int) and not isinstance(val, bool) and isinstance(choices, list):
            if not 0 <= val < len(choices) or not isinstance(choices[val], str):
                raise TaskError(
                    f"{where}: {key} index {val} does not name one of the {len(choices)} string choices; fix the record"
                )
            return choices[val]
        if not isinstance(val, str):
            raise TaskError(f"{where}: field {key!r} must be a string, got {type(val).__name__}; quote it")
        return val.strip()
    return ""


def read_prompt_file(path: str | Path) -> list[TaskItem]:
    """Items of a prompt file (JSONL, or DnD / LLaMA-Factory JSON); see the module docstring for the formats."""
    path = Path(path)
    if path.suffix == ".json":
        return read_dnd_json(path)
    text = read_user_text(path)  # missing, non-UTF-8 and empty files are errors naming the file
    if path.suffix != ".jsonl" and text.lstrip().startswith("["):
        return read_dnd_json(path)
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(
                f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); write one JSON object per line"
            ) from None
        if not isinstance(rec, dict):
            raise TaskError(
                f"{where}: expected a JSON object with 'prompt' and 'response', "
                f"got {type(rec).__name__}; write one object per line"
            )
        prompt = rec.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            what = "missing" if "prompt" not in rec else "not a non-empty string"
            raise TaskError(f"{where}: field 'prompt' is {what}; every record needs a non-empty 'prompt' string")
        items.append(TaskItem(prompt, _answer(rec, where), None, {"where": where}))
    if not items:
        raise TaskError(
            f'{path}: no records (only blank lines); add at least one {{"prompt": ..., "response": ...}} line'
        )
    return items


# ------------------------------------------------------------------------------------------ pools


@dataclass(frozen=True)
class ConditionPool:
    """Items a condition may be drawn from, and where they came from (for error messages)."""

    name: str
    items: tuple[TaskItem, ...]
    source: str
    # which part of a split pool this is ("kept ..." / "held back ...": :meth:`split`); None for a whole pool
    part: str | None = None

    def __post_init__(self) -> None:
        if not self.items:
            raise ConditionError(
                f"condition pool {self.name!r} ({self.source}) is empty; give the task a non-empty condition split"
            )

    @classmethod
    def from_task(cls, task: Task) -> ConditionPool:
        """The task's *condition* split only: train and eval items never become conditions."""
        return cls(task.name, tuple(task.condition), f"condition split of task {task.name!r}")

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> ConditionPool:
        path = Path(path)
        return cls(name or path.stem, tuple(read_prompt_file(path)), str(path))

    def __len__(self) -> int:
        return len(self.items)

    def split(self, fraction: float, seed: int) -> tuple[ConditionPool, ConditionPool]:
        """(kept, held back): a partition of the items, a deterministic function of ``(name, seed)`` and the size.

        ``round(fraction · size)`` items are held back, at least one and never all, in a seeded order of the pool
        (so a larger fraction holds back a superset); both parts keep the pool's item order and name, and their
        ``part`` says which they are. The seen-task evaluation conditions on the held-back part, which generator
        training must never draw: see ``deltalora.experiment.run.prepare``.
        """
        n = len(self.items)
        if not 0 < fraction < 1:
            raise ConditionError(f"the held-back fraction of a condition pool must be in (0, 1), got {fraction}")
        if n < 2:
            raise ConditionError(
                f"condition pool {self.name!r} ({self.source}) has {n} item; holding prompts back needs at least 2 — "
                "give the task a larger condition split, or turn the seen-task section off (seen: {tasks: 0})"
            )
        k = min(n - 1, max(1, round(fraction * n)))
        order = list(range(n))
        random.Random(stable_seed("condition-split", self.name, seed)).shuffle(order)
        held = set(order[:k])
        kept = tuple(it for i, it in enumerate(self.items) if i not in held)
        back = tuple(it for i, it in enumerate(self.items) if i in held)
        what = f"of {n} (fraction {fraction:g}, seed {seed})"
        return (
            ConditionPool(self.name, kept, self.source, f"kept {n - k} {what}"),
            ConditionPool(self.name, back, self.source, f"held back {k} {what}"),
        )

    def texts(self, form: Form) -> list[str]:
        if form == "prompt_answer":
            for i, it in enumerate(self.items):
                if not it.answer.strip():
                    where = it.meta.get("where") or f"{self.source}, item {i}"
                    raise ConditionError(
                        f"{where}: no 'response'/'answer' but the prompt_answer condition form needs one; "
                        "add it to every record or use form 'prompts'"
                    )
        return [condition_text(it, form) for it in self.items]


def pools_from_tasks(tasks: Iterable[Task]) -> dict[str, ConditionPool]:
    return {t.name: ConditionPool.from_task(t) for t in tasks}


def split_pools(
    pools: Mapping[str, ConditionPool], names: Iterable[str], fraction: float, seed: int
) -> tuple[dict[str, ConditionPool], dict[str, ConditionPool]]:
    """(every pool, with those of ``names`` replaced by their kept part; the held-back parts of ``names``):
    :meth:`ConditionPool.split` of each named pool, the others left whole."""
    names = set(names)
    missing = sorted(names - set(pools))
    if missing:
        raise ConditionError(f"no condition pool for task(s) {missing} to split")
    parts = {n: pools[n].split(fraction, seed) for n in sorted(names)}
    kept = {n: parts[n][0] if n in parts else p for n, p in pools.items()}
    return kept, {n: held for n, (_, held) in parts.items()}


def sample_indices(pool_size: int, n: int, seed: int) -> list[int]:
    """``n`` indices into a pool of ``pool_size``: distinct when ``n <= pool_size``, else whole shuffled
    passes over the pool (each item ⌊n/size⌋ or ⌈n/size⌉ times); a pure function of the arguments."""
    if pool_size < 1 or n < 1:
        raise ConditionError(f"cannot sample {n} prompts from a pool of {pool_size}")
    rng = random.Random(seed)
    out: list[int] = []
    while len(out) < n:
        take = min(n - len(out), pool_size)
        out += rng.sample(range(pool_size), take)
    return out


class Conditioner:
    """Encodes condition pools once and samples ``[n_prompts, dim]`` conditions from them.

    ``sample(task, seed=, epoch=, key=)`` takes a pool name, or a tuple of names (a mixed teacher: the
    union of its components' pools). The rows are a deterministic function of ``(seed, epoch, key)``.
    """

    def __init__(
        self,
        encoder: SentenceEncoder,
        pools: Mapping[str, ConditionPool],
        n_prompts: int,
        form: Form = "prompts",
        cache: EmbeddingCache | str | Path | None = None,
        batch_size: int = 32,
    ):
        if form not in FORMS:
            raise ConditionError(f"unknown condition form {form!r}; use one of {', '.join(FORMS)}")
        if n_prompts < 1:
            raise ConditionError(f"n_prompts must be >= 1, got {n_prompts}")
        self.encoder = encoder
        self.pools = dict(pools)
        self.n_prompts = int(n_prompts)
        self.form: Form = form
        self.texts: dict[str, list[str]] = {name: p.texts(form) for name, p in self.pools.items()}
        flat = [t for ts in self.texts.values() for t in ts]
        emb = encode_texts(encoder, flat, cache=cache, batch_size=batch_size)
        self.embeddings: dict[str, torch.Tensor] = {}
        start = 0
        for name, ts in self.texts.items():
            self.embeddings[name] = emb[start : start + len(ts)]
            start += len(ts)

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def _names(self, task: str | Sequence[str]) -> tuple[str, ...]:
        names = (task,) if isinstance(task, str) else tuple(task)
        missing = [n for n in names if n not in self.pools]
        if missing:
            raise ConditionError(
                f"no condition pool for task(s) {missing}; build the Conditioner with pools for them "
                f"(known: {', '.join(sorted(self.pools)) or 'none'})"
            )
        return names

    def indices(self, task: str | Sequence[str], *, seed: int = 0, epoch: int = 0, key: object = 0) -> list[int]:
        """Rows (into the concatenated pools of ``task``) of one condition."""
        names = self._names(task)
        size = sum(len(self.pools[n]) for n in names)
        return sample_indices(
            size, self.n_prompts, stable_seed("condition", "+".join(names), self.form, seed, epoch, key)
        )

    def sample(self, task: str | Sequence[str], *, seed: int = 0, epoch: int = 0, key: object = 0) -> torch.Tensor:
        """One condition: float32 [n_prompts, dim]."""
        names = self._names(task)
        emb = self.embeddings[names[0]] if len(names) == 1 else torch.cat([self.embeddings[n] for n in names])
        return emb[self.indices(names, seed=seed, epoch=epoch, key=key)]

    def sample_texts(self, task: str | Sequence[str], *, seed: int = 0, epoch: int = 0, key: object = 0) -> list[str]:
        """The texts behind :meth:`sample` (same arguments, same rows)."""
        names = self._names(task)
        texts = [t for n in names for t in self.texts[n]]
        return [texts[i] for i in self.indices(names, seed=seed, epoch=epoch, key=key)]

    def batch(
        self,
        tasks: Sequence[str | Sequence[str]],
        *,
        seed: int = 0,
        epoch: int = 0,
        keys: Sequence[object] | None = None,
    ) -> torch.Tensor:
        """K conditions stacked: float32 [K, n_prompts, dim]."""
        keys = list(range(len(tasks))) if keys is None else list(keys)
        return torch.stack([self.sample(t, seed=seed, epoch=epoch, key=k) for t, k in zip(tasks, keys, strict=True)])


__all__ = [
    "ANSWER_SEPARATOR",
    "FORMS",
    "ConditionError",
    "ConditionPool",
    "Conditioner",
    "condition_text",
    "pools_from_tasks",
    "read_prompt_file",
    "sample_indices",
    "split_pools",
]
