"""What ``deltalora tasks`` shows: a suite's tasks as table rows, a few formatted items of one task, and prefetch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..backbones.tiny import byte_level_tokenizer
from .formatting import format_prompt, format_target
from .items import Task
from .suite import build_task, get_spec, load_suite, prefetch


def suite_rows(suite: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per task of the suite (default suite when None): name, family, kind, source, args, the requested
    split sizes (train, condition, eval) and the hold-out group (the task itself unless it names siblings). Reads no
    task data."""
    return [
        {
            "name": s.name,
            "family": s.family,
            "kind": s.kind,
            "source": s.source,
            "args": s.args,
            **s.sizes,
            "group": s.holdout_group,
        }
        for s in load_suite(suite)
    ]


def preview_task(
    name: str, split: str = "eval", n: int = 3, seed: int = 0, suite: str | Path | None = None
) -> tuple[Task, list[dict[str, Any]]]:
    """Build task ``name`` (split seed ``seed``) and format the first ``n`` items of ``split`` with the tiny
    ChatML template: the task and ``[{"prompt", "target", "item"}]``."""
    task = build_task(get_spec(load_suite(suite), name), seed=seed)
    items = task.split(split)[:n]
    tok = byte_level_tokenizer()
    shown = [
        {"prompt": format_prompt(tok, task, it), "target": format_target(task, it), "item": it.to_dict()}
        for it in items
    ]
    return task, shown


def fetch_suite(suite: str | Path | None = None) -> None:
    """Download and extract the data the suite's tasks need (see :func:`~deltalora.tasks.prefetch`)."""
    prefetch(load_suite(suite))


__all__ = ["fetch_suite", "preview_task", "suite_rows"]
