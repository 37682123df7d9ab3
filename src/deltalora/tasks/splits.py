"""Seeded, disjoint, deterministic train / condition / eval splits."""

from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Sequence

from .items import SPLITS, TaskError, TaskItem, prompt_key


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` that is the same in every process (unlike ``hash()``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def dedupe(items: Sequence[TaskItem]) -> list[TaskItem]:
    """Items with distinct normalised prompts; the first occurrence wins, order is kept."""
    seen: set[str] = set()
    out = []
    for it in items:
        key = prompt_key(it.prompt)
        if key not in seen:
            seen.add(key)
            out.append(it)
    return out


def fit_sizes(task: str, available: int, n_train: int, n_condition: int, n_eval: int) -> tuple[int, int, int]:
    """Shrink the requested sizes to ``available`` items: train first, then condition, then eval (warning).

    Raises :class:`TaskError` if condition or eval would be left empty.
    """
    want = {"train": n_train, "condition": n_condition, "eval": n_eval}
    got = dict(want)
    short = sum(want.values()) - available
    for split in SPLITS:  # train, condition, eval
        if short <= 0:
            break
        cut = min(short, got[split])
        got[split] -= cut
        short -= cut
    for split in ("condition", "eval"):
        if got[split] <= 0:
            raise TaskError(
                f"task {task!r}: only {available} distinct items, too few for a non-empty {split} split "
                f"(asked for {want}); lower n_condition/n_eval or use a larger source"
            )
    if got != want:
        warnings.warn(
            f"task {task!r}: source has {available} distinct items, fewer than the {sum(want.values())} "
            f"requested; split sizes shrunk from {want} to {got}",
            stacklevel=3,
        )
    return got["train"], got["condition"], got["eval"]


def split_items(
    task: str, pool: Sequence[TaskItem], seed: int, n_train: int, n_condition: int, n_eval: int
) -> dict[str, list[TaskItem]]:
    """Dedupe ``pool``, shuffle it with a seed derived from (task, seed), then cut eval, condition, train.

    Eval is cut first, so changing ``n_train`` (or ``n_condition``) never changes which items are evaluated.
    """
    pool = dedupe(pool)
    n_train, n_condition, n_eval = fit_sizes(task, len(pool), n_train, n_condition, n_eval)
    order = list(range(len(pool)))
    random.Random(stable_seed("split", task, seed)).shuffle(order)
    ev = order[:n_eval]
    cond = order[n_eval : n_eval + n_condition]
    tr = order[n_eval + n_condition : n_eval + n_condition + n_train]
    return {
        "train": [pool[i] for i in tr],
        "condition": [pool[i] for i in cond],
        "eval": [pool[i] for i in ev],
    }
