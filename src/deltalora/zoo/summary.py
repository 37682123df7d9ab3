"""What ``deltalora zoo`` reports: a zoo's adapters per task and family, after a build, a listing or a DnD import."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..config import parse_overrides
from ..errors import ConfigError
from .build import build_zoo, load_zoo_config, parse_shard
from .dnd_import import import_dnd
from .manifest import ZooEntry, read_manifest


def summarize(entries: Iterable[ZooEntry]) -> dict[str, Any]:
    """``{"adapters", "tasks": [{task, family, tasks, adapters, seeds, steps, seconds_per_run}] (by task name),
    "families": {f: n}, "train_seconds"}``.

    ``seconds_per_run`` is the median training wall time of the task's runs (one per seed; its checkpoints share
    it) as the build recorded it, ``None`` where no run recorded one (imported zoos); ``train_seconds`` sums every
    recorded run. What a teacher of each task costs decides how many tasks a zoo can afford."""
    entries = list(entries)
    by_task: dict[str, dict] = {}
    run_seconds: dict[str, dict[str, float]] = defaultdict(dict)  # task -> run -> seconds
    for e in entries:
        t = by_task.setdefault(
            e.task,
            {"task": e.task, "family": e.family, "tasks": list(e.tasks), "adapters": 0, "seeds": set(), "steps": set()},
        )
        t["adapters"] += 1
        t["seeds"].add(e.seed)
        t["steps"].add(e.step)
        sec = e.extra.get("train_seconds")
        if isinstance(sec, (int, float)) and not isinstance(sec, bool):
            run_seconds[e.task][e.run] = float(sec)
    rows = [
        {
            **r,
            "seeds": sorted(r["seeds"]),
            "steps": sorted(r["steps"]),
            "seconds_per_run": statistics.median(run_seconds[t].values()) if run_seconds[t] else None,
        }
        for t, r in sorted(by_task.items())
    ]
    families: dict[str, int] = defaultdict(int)
    for e in entries:
        families[e.family] += 1
    total = sum(sum(runs.values()) for runs in run_seconds.values())
    return {
        "adapters": len(entries),
        "tasks": rows,
        "families": dict(sorted(families.items())),
        "train_seconds": round(total, 1),
    }


def build_from_config(
    config: str | Path,
    out: str | Path | None = None,
    shard: str | None = None,
    reuse: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Build (or resume) the zoo of the YAML ``config`` with ``--set``-style ``overrides`` (``KEY=VALUE``) into ``out``
    (default ``runs/zoo/<config stem>``), shard ``"i/n"`` of its jobs; the zoo's summary with ``zoo``, ``shard`` and
    ``seconds`` (the build's)."""
    cfg = load_zoo_config(config, parse_overrides(list(overrides)))
    where = Path(out) if out is not None else Path("runs") / "zoo" / Path(config).stem
    i_n = parse_shard(shard)
    t0 = time.perf_counter()
    entries = build_zoo(cfg, where, shard=i_n, progress=progress, reuse=reuse)
    s = summarize(entries)
    s.update(zoo=str(where), shard=f"{i_n[0]}/{i_n[1]}", seconds=round(time.perf_counter() - t0, 1))
    return s


def list_zoo(zoo: str | Path, verify: bool = False) -> dict[str, Any]:
    """The summary of a zoo directory (or its manifest); ``verify`` re-hashes every adapter against the manifest."""
    return summarize(read_manifest(Path(zoo), verify=verify))


def parse_families(pairs: Iterable[str]) -> dict[str, str]:
    """``["DATASET=FAMILY", ...]`` -> ``{dataset: family}``; ConfigError for a pair without ``=``."""
    families = {}
    for f in pairs:
        if "=" not in f:
            raise ConfigError(f"--family {f!r}: expected DATASET=FAMILY")
        k, v = f.split("=", 1)
        families[k] = v
    return families


def import_from_dnd(
    dnd: str | Path,
    out: str | Path,
    backbone: str | None = None,
    families: Iterable[str] = (),
    prompts: str | Path | None = None,
    alpha: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`~deltalora.zoo.import_dnd` with ``families`` as ``DATASET=FAMILY`` pairs; the summary of the imported
    entries with ``zoo``."""
    entries = import_dnd(
        dnd,
        out,
        backbone=backbone,
        families=parse_families(families),
        prompts_dir=prompts,
        alpha=alpha,
        progress=progress,
    )
    s = summarize(entries)
    s["zoo"] = str(out)
    return s


__all__ = ["build_from_config", "import_from_dnd", "list_zoo", "parse_families", "summarize"]
