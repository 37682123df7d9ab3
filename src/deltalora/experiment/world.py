"""What a study over a zoo starts from — the backbone, the zoo (built or reused), its tasks, every teacher's Δ on the
generator's probes and the condition pools — prepared once, the same way, for the compositionality study and the
task-scaling study (the held-out run's :func:`~.run.prepare` shares its stages too).

``score`` (:func:`~.run.score`) reads a world as it reads a run's context: ``cfg.eval``, ``out``, ``backbone``,
``tasks``, ``stage`` and ``progress``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..conditions import Conditioner, load_encoder, pools_from_tasks
from ..config import RuntimeConfig
from ..deltas import DeltaCache, DeltaSpec, TaskProbes
from ..lora import LoraWeights, load_adapter
from ..training import TeacherDataset
from ..zoo import ZooConfig
from ..zoo.manifest import ZooEntry, adapter_dir
from .merge_cache import MergeCache
from .run import machine_of, teacher_delta_stage, zoo_stage
from .timing import StageClock


@dataclass
class World:
    cfg: object  # the study's config: zoo, zoo_set, zoo_dir, train, delta_batch_adapters, eval
    out: Path
    backbone: object
    zoo_dir: Path
    entries: list[ZooEntry]
    tasks: dict
    probes: object  # the generator's probe set (a name, or TaskProbes)
    spec: DeltaSpec
    conditioner: Conditioner
    cache: DeltaCache
    clock: StageClock
    progress: bool = True
    machine: dict | None = None

    def stage(self, name: str, t0: float) -> None:
        self.clock.add(name, t0)

    @property
    def merges(self) -> MergeCache:
        """The study's dense merges, kept under ``out/merges`` (a rerun reads them back)."""
        return MergeCache(self.out / "merges")

    def adapter(self, entry: ZooEntry) -> LoraWeights:
        """One zoo teacher's adapter, read from the zoo (float32, checked against the backbone's layout)."""
        return load_adapter(adapter_dir(self.zoo_dir, entry), self.backbone.arch, dtype=torch.float32)

    def teachers(self, exclude: Iterable[str] = (), mixed: bool = True) -> TeacherDataset:
        """The zoo's teachers of every task but ``exclude`` (a teacher with an excluded component is left out), with
        their Δ on the generator's probes; ``mixed=False`` leaves every mixed teacher out too."""
        return TeacherDataset(
            self.zoo_dir,
            self.conditioner,
            self.spec,
            split="train",
            heldout=sorted(exclude),
            cache=self.cache,
            arch=self.backbone.arch,
            task_probes=self.probes if isinstance(self.probes, TaskProbes) else None,
            mixed=mixed,
        )


def prepare_world(
    cfg,
    out: str | Path,
    progress: bool = True,
    backbone=None,
    check: Callable[[list[ZooEntry], Path, ZooConfig], None] | None = None,
    kind: type[World] = World,
) -> World:
    """Backbone, zoo, teacher Δ on ``cfg.train``'s probes and the condition pools, into ``out`` (all reused when
    already there); ``check(entries, zoo_dir, zoo_cfg)`` runs once the zoo is there, before any Δ (a config error fails
    fast). Returns a ``kind`` (a :class:`World` or a subclass with defaults for its own fields)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(out)
    zoo_cfg, backbone, zoo_dir, entries = zoo_stage(cfg, out, progress, backbone, clock)
    if check is not None:
        check(entries, zoo_dir, zoo_cfg)
    tasks, probes, cache = teacher_delta_stage(cfg, zoo_cfg, backbone, zoo_dir, out, progress, clock)
    t0 = time.perf_counter()
    encoder = load_encoder(cfg.train.encoder, RuntimeConfig(device=zoo_cfg.runtime.device), progress=progress)
    conditioner = Conditioner(encoder, pools_from_tasks(tasks.values()), cfg.train.n_prompts, cfg.train.condition_form)
    spec = DeltaSpec.for_backbone(backbone, probes, cfg.train.representation)
    clock.add("conditions", t0)
    return kind(
        cfg=cfg,
        out=out,
        backbone=backbone,
        zoo_dir=zoo_dir,
        entries=entries,
        tasks=tasks,
        probes=probes,
        spec=spec,
        conditioner=conditioner,
        cache=cache,
        clock=clock,
        progress=progress,
        machine=machine_of(backbone, zoo_cfg),
    )


__all__ = ["World", "prepare_world"]
