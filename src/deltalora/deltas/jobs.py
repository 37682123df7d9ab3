"""Δ jobs by name and path: extract teacher Δ for a zoo, adapters or models (locally or on Ray), and score how
well Δ clusters a zoo by task family. Each loads the backbone itself."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..backbones import load_backbone
from ..config import RuntimeConfig, model_validate_or_raise
from ..sharding import parse_shard
from ..tasks import Task, TaskSpec, build_task
from ..zoo import CONFIG_NAME, load_zoo_config
from ..zoo.build import selected_specs
from . import DeltaError, DeltaReport, compute_deltas, sources_from_adapters, sources_from_manifest, sources_from_models
from .analyze import clustering_report
from .listing import zoo_labels
from .probes import is_task_probes, parse_task_probes, resolve_probes
from .ray_backend import compute_deltas_ray, require_ray

BACKENDS = ("local", "ray")


def zoo_tasks(zoo: str | Path, zoo_config: str | Path | None = None) -> dict[str, Task]:
    """The tasks a zoo was built from (name -> Task, with the zoo's splits): from its YAML ``zoo_config`` when given,
    else from the task specs its ``zoo_config.json`` recorded — which cannot rebuild a task read from a user file
    (the zoo records that file's name and hash, not its path)."""
    if zoo_config is not None:
        cfg = load_zoo_config(zoo_config)
        return {s.name: build_task(s, seed=cfg.split_seed) for s in selected_specs(cfg)[1]}
    root = Path(zoo)
    path = (root if root.is_dir() else root.parent) / CONFIG_NAME
    if not path.is_file():
        raise DeltaError(f"{path}: missing, so the zoo's tasks are unknown; pass --zoo-config (the zoo's YAML)")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        specs = saved["task_specs"]
        seed = int((saved.get("config") or {}).get("split_seed", 0))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DeltaError(f"{path}: not a zoo config; pass --zoo-config (the zoo's YAML)") from None
    out = {}
    for d in specs:
        if isinstance((d.get("args") or {}).get("path"), dict):
            raise DeltaError(
                f"{path}: task {d.get('name')!r} was read from a user file whose path the zoo does not record; pass "
                "--zoo-config (the zoo's YAML)"
            )
        try:
            spec = TaskSpec.model_validate(d)
        except ValidationError:
            raise DeltaError(f"{path}: task spec {d.get('name')!r} is invalid; pass --zoo-config") from None
        out[spec.name] = build_task(spec, seed=seed)
    return out


def compute_deltas_for(
    backbone: str,
    zoo: str | Path | None = None,
    adapters: Sequence[str | Path] = (),
    models: Sequence[str | Path] = (),
    probes: str = "generic5",
    representation: str = "last_token",
    batch_adapters: int = 8,
    shard: str | None = None,
    cache: str | Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
    backend: str = "local",
    ray_actors: int = 2,
    progress: bool = True,
    zoo_config: str | Path | None = None,
) -> DeltaReport:
    """Δ of one kind of source (the adapters of a ``zoo`` manifest, PEFT ``adapters`` or fine-tuned ``models``)
    on ``backbone`` (loaded here with ``device``/``dtype``), shard ``"i/n"`` of them, through the cache.

    Every option is checked before the backbone loads. ``backend="ray"`` runs a Ray Data pool of ``ray_actors``.
    ``progress`` shows the backbone's loading; extraction always logs its progress.
    """
    if sum([bool(zoo), bool(adapters), bool(models)]) != 1:
        raise DeltaError("pass exactly one of --zoo MANIFEST, --adapter DIR (repeatable) or --model DIR (repeatable)")
    if backend not in BACKENDS:
        raise DeltaError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if is_task_probes(probes):
        parse_task_probes(probes)  # before the backbone is loaded
        if not zoo:
            raise DeltaError(f"--probes {probes}: task probes are each teacher's own task's prompts; pass --zoo DIR")
        if backend == "ray":
            raise DeltaError(f"--probes {probes}: task probes run with --backend local only")
    if backend == "ray":
        require_ray()  # before the backbone is loaded
    shard_t = parse_shard(shard)
    if zoo:
        sources = sources_from_manifest(zoo)
    else:
        sources = sources_from_adapters(adapters) if adapters else sources_from_models(models)
    runtime = model_validate_or_raise(RuntimeConfig, {"device": device, "dtype": dtype}, "--device/--dtype")
    b = load_backbone(backbone, runtime, progress=progress)
    if backend == "ray":
        return compute_deltas_ray(
            b, sources, probes, representation, cache, batch_adapters, shard_t, progress=True, num_actors=ray_actors
        )
    resolved = resolve_probes(probes, zoo_tasks(zoo, zoo_config) if is_task_probes(probes) else {}, b.tokenizer)
    return compute_deltas(b, sources, resolved, representation, cache, batch_adapters, shard_t, progress=True)


def analyze_zoo(
    backbone: str,
    zoo: str | Path,
    probes: str = "generic5",
    representation: str = "last_token",
    batch_adapters: int = 8,
    cache: str | Path | None = None,
    png: str | Path | None = None,
    weights: bool = True,
    progress: bool = True,
    zoo_config: str | Path | None = None,
) -> dict[str, Any]:
    """Δ of every adapter of ``zoo`` (missing ones computed) and :func:`~deltalora.deltas.analyze.clustering_report`
    over them: silhouettes by family (and by task), next to flattened weights' unless ``weights`` is False, and a
    t-SNE PNG at ``png``. The result also names the backbone, probes, representation and the broken adapters."""
    sources = sources_from_manifest(zoo)
    if is_task_probes(probes):
        parse_task_probes(probes)
    b = load_backbone(backbone, progress=progress)
    resolved = resolve_probes(probes, zoo_tasks(zoo, zoo_config) if is_task_probes(probes) else {}, b.tokenizer)
    report = compute_deltas(b, sources, resolved, representation, cache, batch_adapters, progress=progress)
    ids, deltas = report.load()
    labels = zoo_labels(zoo, ids)
    result = clustering_report(
        deltas.numpy(),
        labels.families,
        labels.dirs if weights else None,
        b.arch,
        Path(png) if png else None,
        runs=labels.runs,
    )
    return {
        "backbone": b.name,
        "probes": report.probes,
        "repr": report.representation,
        "broken": [r.id for r in report.broken],
        **result,
    }


__all__ = ["BACKENDS", "analyze_zoo", "compute_deltas_for", "zoo_tasks"]
