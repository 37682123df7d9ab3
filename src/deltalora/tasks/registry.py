"""The task-source registry (imitating lm-eval's ``register_*`` decorators).

Adding a source is one decorated function. It receives its validated arguments (an instance of its
``args`` pydantic model) and returns the *whole* pool of items; splitting is done by the caller::

    class MyArgs(StrictModel):
        path: str

    @register_task_source("my_source", args=MyArgs)
    def _my_source(args: MyArgs, *, name: str, kind: str, size: int, seed: int) -> list[TaskItem]:
        ...

``kinds`` lists the task kinds (``mc``, ``short``, ``code``) the source can produce; the task spec picks
one and the source receives it. A ``generator=True`` source produces ``size`` fresh items from ``seed`` (e.g.
reasoning-gym); a finite source ignores ``size`` and ``seed`` and returns everything it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from ..registry import Registry
from .items import TaskError, TaskItem

SourceFn = Callable[..., list[TaskItem]]


@dataclass(frozen=True)
class TaskSource:
    name: str
    fn: SourceFn
    args: type[BaseModel]
    kinds: tuple[str, ...]
    generator: bool
    scorer: str | None  # None = the default scorer of the task's kind


_SOURCES = Registry("task source")


def register_task_source(
    name: str,
    *,
    args: type[BaseModel],
    kinds: tuple[str, ...] = ("short",),
    generator: bool = False,
    scorer: str | None = None,
):
    return _SOURCES.register(name, make=lambda fn: TaskSource(name, fn, args, tuple(kinds), generator, scorer))


def source_names() -> list[str]:
    return sorted(_SOURCES)


def get_source(name: str) -> TaskSource:
    return _SOURCES.lookup(name, TaskError, f"use one of {', '.join(source_names())}")
