"""Build a teacher zoo: one LoRA per (task, seed) — and per mixed task pair — with tail checkpoints.

A *job* is one training run, ``<task>/s<seed>`` (``<a>+<b>/s<seed>`` for a mixed teacher), and yields
one adapter per tail checkpoint, ``<out>/<task>/s<seed>/step<N>``, each listed in ``manifest.jsonl``.
Jobs are sorted by id; ``shard=(i, n)`` takes every n-th of them, so shards are disjoint and together
cover the whole job set. A job's manifest entries are appended only after *all* its checkpoints are
written, so a killed job leaves unlisted directories that the rerun overwrites (adapter directories
are written atomically); a job whose entries are all listed is skipped (resume).

The resolved config is saved beside the manifest (``zoo_config.json``); building into a zoo whose
saved config differs is refused. A canonical zoo (``teacher.init: canonical``, the default) starts every job
from one LoRA init stored in the zoo (:mod:`deltalora.zoo.canonical`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field, field_validator, model_validator

from ..backbones import architecture_of, load_backbone
from ..backbones.precision import PrecisionDecision, cpu_info
from ..config import DTYPES, RuntimeConfig, StrictModel, load_yaml
from ..paths import atomic_dir, atomic_write_bytes
from ..sharding import parse_shard, take_shard
from ..tasks import (
    TaskItem,
    TaskSpec,
    build_task,
    format_prompt,
    format_target,
    get_spec,
    load_suite,
    prefetch,
    stable_seed,
)
from .canonical import ensure_init, init_kind, init_record
from .manifest import CONFIG_NAME, MANIFEST_NAME, ZooEntry, ZooError, append_entry, file_sha256, read_manifest
from .train import TeacherTrainConfig, teacher_precision, train_teacher


class ZooConfig(StrictModel):
    """What a zoo is built from. Relative ``suite`` paths are resolved against the YAML's folder."""

    backbone: str
    runtime: RuntimeConfig = RuntimeConfig()
    suite: str | None = None  # suite YAML; None = configs/tasks/default.yaml
    tasks: list[str] | None = None  # None = every task of the suite
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    subset: int | None = Field(None, ge=1)  # train items each seed samples from a task's train split; None = all
    teacher: TeacherTrainConfig = TeacherTrainConfig()
    mixed: list[tuple[str, str]] = Field(default_factory=list)  # task pairs -> teachers on the union of both
    split_seed: int = 0

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or any(s < 0 for s in v):
            raise ValueError(f"seeds must be distinct non-negative integers, got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _pairs(self) -> ZooConfig:
        seen = set()
        for a, b in self.mixed:
            if a == b:
                raise ValueError(f"mixed pair ({a}, {b}) names one task twice")
            key = tuple(sorted((a, b)))
            if key in seen:
                raise ValueError(f"mixed pair ({a}, {b}) is listed twice")
            seen.add(key)
        return self

    def tail_steps(self) -> list[int]:
        """The steps whose checkpoints train_teacher keeps (ascending)."""
        t = self.teacher
        return sorted(s for s in {t.steps - i * t.checkpoint_every for i in range(t.checkpoints)} if s > 0)


def load_zoo_config(path: str | Path, overrides: dict | None = None) -> ZooConfig:
    """Read a zoo YAML strictly; a relative ``suite`` is resolved against the YAML's folder."""
    path = Path(path)
    cfg = load_yaml(path, ZooConfig, overrides)
    if cfg.suite is not None and not Path(cfg.suite).expanduser().is_absolute():
        cfg = cfg.model_copy(update={"suite": str((path.parent / cfg.suite).resolve())})
    return cfg


@dataclass(frozen=True)
class ZooJob:
    task: str  # "a" or "a+b"
    family: str
    components: tuple[str, ...]  # the tasks whose train items are used: (a,) or (a, b)
    seed: int

    @property
    def id(self) -> str:
        return f"{self.task}/s{self.seed}"

    @property
    def mixed(self) -> bool:
        return len(self.components) > 1

    def entry_id(self, step: int) -> str:
        return f"{self.id}/step{step}"


def selected_specs(cfg: ZooConfig) -> tuple[list[TaskSpec], list[TaskSpec]]:
    """(specs of the single-task teachers, every spec the zoo needs incl. mixed components)."""
    specs = load_suite(cfg.suite)
    chosen = [get_spec(specs, n) for n in cfg.tasks] if cfg.tasks is not None else specs
    needed = {s.name: s for s in chosen}
    for pair in cfg.mixed:
        for n in pair:
            needed.setdefault(n, get_spec(specs, n))
    return chosen, sorted(needed.values(), key=lambda s: s.name)


def holdout_groups(cfg: ZooConfig) -> dict[str, str]:
    """Each single-task teacher's hold-out group (``TaskSpec.holdout_group``): siblings share one."""
    return {s.name: s.holdout_group for s in selected_specs(cfg)[0]}


def plan_jobs(cfg: ZooConfig) -> list[ZooJob]:
    """Every job of ``cfg``, sorted by id (reads the suite, never task data)."""
    chosen, needed = selected_specs(cfg)
    fam = {s.name: s.family for s in needed}
    jobs = [ZooJob(s.name, s.family, (s.name,), seed) for s in chosen for seed in cfg.seeds]
    for a, b in cfg.mixed:
        family = fam[a] if fam[a] == fam[b] else "mixed"
        jobs += [ZooJob(f"{a}+{b}", family, (a, b), seed) for seed in cfg.seeds]
    jobs.sort(key=lambda j: j.id)
    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        raise ZooError(
            "two zoo jobs share an id (a task name contains '+' and collides with a mixed pair); rename the task"
        )
    return jobs


def shard_jobs(jobs: list[ZooJob], shard: tuple[int, int]) -> list[ZooJob]:
    """This worker's jobs, in plan order (see :mod:`deltalora.sharding`)."""
    return take_shard(jobs, shard)


def sample_train(task, cfg: ZooConfig, seed: int) -> list[TaskItem]:
    """The train items seed ``seed`` trains on: a seeded subset of the task's train split."""
    items = list(task.train)
    if not items:
        raise ZooError(
            f"task {task.name!r} has an empty train split (n_train 0 or too few items); it cannot have teachers"
        )
    if cfg.subset is None or cfg.subset >= len(items):
        return items
    return random.Random(stable_seed("zoo-subset", task.name, seed)).sample(items, cfg.subset)


# ---------------------------------------------------------------------------------------- resolved config


def training_pairs(
    cfg: ZooConfig, specs: dict[str, TaskSpec], names: Sequence[str], seed: int, tokenizer
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """The (prompt, target) pairs a zoo-seed-``seed`` teacher of the tasks ``names`` trains on — each task's
    :func:`sample_train` items, formatted — and how many items each task gave."""
    pairs: list[tuple[str, str]] = []
    n_items: dict[str, int] = {}
    for name in names:
        task = build_task(specs[name], seed=cfg.split_seed)
        items = sample_train(task, cfg, seed)
        n_items[name] = len(items)
        pairs += [(format_prompt(tokenizer, task, it), format_target(task, it)) for it in items]
    return pairs, n_items


def _file_digest(p: str) -> str:
    path = Path(p)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def zoo_precision(cfg: ZooConfig) -> PrecisionDecision:
    """The dtype this zoo's teachers train in on this machine (``teacher.precision`` resolved on ``runtime``)."""
    return teacher_precision(cfg.teacher.precision, cfg.runtime.torch_device, cfg.runtime.torch_dtype)


def _legacy_init(saved: dict) -> dict:
    """A saved resolved config from before ``teacher.init``: ``shared_init: true`` was ``per_seed``, its absence
    ``per_job`` (every job drew its own A)."""
    teacher = (saved.get("config") or {}).get("teacher") if isinstance(saved, dict) else None
    if not isinstance(teacher, dict) or "init" in teacher:
        return saved
    teacher = {k: v for k, v in teacher.items() if k != "shared_init"}
    teacher["init"] = init_kind(saved["config"]["teacher"])
    return {**saved, "config": {**saved["config"], "teacher": teacher}}


def _legacy_precision(saved: dict) -> dict:
    """A saved resolved config as this version writes it: ``teacher.bf16_autocast`` (zoos built before
    ``teacher.precision``) becomes the effective ``teacher.precision`` it trained in.

    Why normalise the old key rather than keep writing it: the fingerprint should name the dtype
    ("bfloat16"), not a switch whose meaning depends on the weights' dtype; old files are read, never
    rewritten, so an old zoo keeps matching (bf16_autocast true == an ``auto`` that resolves to bfloat16
    on fp32 weights) and stays readable by the version that built it.
    """
    teacher = (saved.get("config") or {}).get("teacher") if isinstance(saved, dict) else None
    if not isinstance(teacher, dict) or "bf16_autocast" not in teacher or "precision" in teacher:
        return saved
    teacher = dict(teacher)
    flag = teacher.pop("bf16_autocast")
    weights = DTYPES.get(str((saved["config"].get("runtime") or {}).get("dtype", "float32")), torch.float32)
    narrow = torch.bfloat16 if flag is True else torch.float32
    teacher["precision"] = str(narrow if narrow.itemsize < weights.itemsize else weights).removeprefix("torch.")
    return {**saved, "config": {**saved["config"], "teacher": teacher}}


def resolved_config(cfg: ZooConfig) -> dict:
    """What the zoo's content depends on: the config (suite location aside) and the specs it reads.

    The suite's *path* is left out so that the same zoo can be built from another checkout or machine;
    the selected task specs (with user-file paths replaced by file name + sha256) stand in for it.
    ``teacher.precision`` is the *effective* dtype on this machine (``auto`` resolved), so a zoo trained in
    bfloat16 is never extended, nor its jobs reused, by a build that would train in float32.
    """
    _, needed = selected_specs(cfg)
    specs = []
    for s in needed:
        d = s.model_dump(mode="json", exclude={"group"})  # how folds hold tasks out, not what a teacher learns
        if isinstance(d["args"].get("path"), str):
            d["args"]["path"] = {"name": Path(d["args"]["path"]).name, "sha256": _file_digest(d["args"]["path"])}
        specs.append(d)
    body = cfg.model_dump(mode="json", exclude={"suite"})
    if cfg.tasks is None:
        body["tasks"] = None
    body["teacher"]["precision"] = zoo_precision(cfg).name
    if cfg.teacher.init != "canonical":  # the seed of the one init means nothing otherwise (nor did old zoos save it)
        del body["teacher"]["init_seed"]
    return {"config": body, "task_specs": specs, "steps": cfg.tail_steps()}


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix or "<root>"]


def check_or_save_config(cfg: ZooConfig, out_dir: Path) -> dict:
    """Save the resolved config beside the manifest, or refuse a zoo built with a different one."""
    resolved = resolved_config(cfg)
    path = Path(out_dir) / CONFIG_NAME
    if path.is_file():
        try:
            saved = _legacy_init(_legacy_precision(json.loads(path.read_text(encoding="utf-8"))))
        except json.JSONDecodeError:
            raise ZooError(f"{path}: not valid JSON; delete the zoo directory or use a new --out") from None
        saved = {k: v for k, v in saved.items() if k != "init"}  # the canonical init's record, checked on its own
        if saved != resolved:
            diff = _diff_keys(saved, resolved)
            hint = ""
            was = (
                ((saved.get("config") or {}).get("teacher") or {}).get("precision") if isinstance(saved, dict) else None
            )
            if "config.teacher.precision" in diff and isinstance(was, str):
                hint = (
                    f"; it trained in {was}, teacher.precision {cfg.teacher.precision} is "
                    f"{resolved['config']['teacher']['precision']} "
                    f"here: set teacher.precision={was} to extend it"
                )
            kind = ((saved.get("config") or {}).get("teacher") or {}).get("init")
            if "config.teacher.init" in diff and isinstance(kind, str):
                hint += f"; it is a {kind} zoo (teachers' LoRA init): set teacher.init={kind} to extend it"
            raise ZooError(
                f"{out_dir}: this zoo was built with a different config (differs in {', '.join(diff[:4])}"
                f"{' ...' if len(diff) > 4 else ''}){hint}; use a new --out or delete it"
            )
        return resolved
    if (Path(out_dir) / MANIFEST_NAME).is_file() and read_manifest(out_dir):
        raise ZooError(f"{out_dir}: has a manifest but no {CONFIG_NAME}; build into a new --out or delete it")
    atomic_write_bytes(path, (json.dumps(resolved, indent=2, sort_keys=True) + "\n").encode())
    return resolved


def repair_manifest_tail(out_dir: Path) -> bool:
    """Drop a torn trailing line (a writer killed mid-line) so the next append starts on a fresh line."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        return False
    with open(path, "r+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            data = fh.read()
            if not data or data.endswith(b"\n"):
                return False
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())
            return True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clear_scratch(job_dir: Path) -> None:
    """Remove scratch dirs a killed save left (``.stepN.tmp-*`` / ``.stepN.old-*``)."""
    if job_dir.is_dir():
        for p in job_dir.iterdir():
            if p.name.startswith(".step") and (".tmp-" in p.name or ".old-" in p.name):
                shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------- reuse


def job_recipe(resolved: dict, job: ZooJob) -> dict:
    """What one job's adapters depend on: the resolved config minus the job list, plus its tasks' specs."""
    body = {k: v for k, v in resolved["config"].items() if k not in ("tasks", "seeds", "mixed")}
    specs = {s["name"]: s for s in resolved["task_specs"]}
    init = (resolved.get("init") or {}).get("sha256")  # canonical zoos: the same init file, not just the same seed
    if init is not None:  # the file is the init's identity; the seed it was drawn from (or not: --reuse) is not
        body = {**body, "teacher": {k: v for k, v in body["teacher"].items() if k != "init_seed"}}
    return {"config": body, "specs": [specs.get(n) for n in job.components], "steps": resolved["steps"], "init": init}


class _ReuseSource:
    """Another zoo whose finished jobs may be copied instead of retrained (``build_zoo(reuse=...)``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        cfg_path = self.root / CONFIG_NAME
        if not cfg_path.is_file() or not (self.root / MANIFEST_NAME).is_file():
            raise ZooError(
                f"--reuse {root}: not a zoo directory (needs {CONFIG_NAME} and {MANIFEST_NAME}); pass a zoo built by "
                "deltalora"
            )
        try:
            self.resolved = _legacy_init(_legacy_precision(json.loads(cfg_path.read_text(encoding="utf-8"))))
        except json.JSONDecodeError:
            raise ZooError(f"{cfg_path}: not valid JSON; drop this --reuse or rebuild that zoo") from None
        self.entries = {e.id: e for e in read_manifest(self.root)}

    def entries_for(self, job: ZooJob, recipe: dict, steps: list[int]) -> list[ZooEntry] | None:
        """The job's entries here if this zoo trained the same job with the same recipe, files intact; else None."""
        if job_recipe(self.resolved, job) != recipe:
            return None
        found = [self.entries.get(job.entry_id(s)) for s in steps]
        if any(e is None for e in found):
            return None
        for e in found:
            f = self.root / e.path / "adapter_model.safetensors"
            if not f.is_file() or file_sha256(f) != e.sha256:
                return None
        return found


def _copy_job(src: _ReuseSource, entries: list[ZooEntry], out: Path, job_dir: Path, listed: dict) -> None:
    """Copy a finished job's checkpoints from another zoo (hard links where the filesystem allows)."""

    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    for e in entries:
        if e.id in listed:
            continue
        dest = job_dir / Path(e.path).name
        with atomic_dir(dest) as tmp:
            shutil.rmtree(tmp)
            shutil.copytree(src.root / e.path, tmp, copy_function=link_or_copy)
        entry = e.model_copy(
            update={"path": dest.relative_to(out).as_posix(), "extra": {**e.extra, "reused_from": str(src.root)}}
        )
        append_entry(out, entry)
        listed[e.id] = entry


# ---------------------------------------------------------------------------------------- build


def build_zoo(
    cfg: ZooConfig,
    out_dir: str | Path,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    backbone=None,
    reuse: Sequence[str | Path] = (),
) -> list[ZooEntry]:
    """Train this shard's missing jobs into ``out_dir``; returns the manifest entries of the shard's jobs.

    ``backbone`` (optional) is an already loaded backbone to train on; by default ``cfg.backbone`` is
    loaded with ``cfg.runtime`` — only if some job still has to be trained. ``reuse`` names other zoos:
    a job one of them finished with the same recipe (backbone, runtime, teacher config, subset, split
    seed, the task specs, checkpoint steps — :func:`job_recipe`) and intact files is copied, not
    retrained. Training is seeded by the job id, so the copy is the adapter this zoo would train.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = shard_jobs(plan_jobs(cfg), shard)
    resolved = check_or_save_config(cfg, out)
    init, init_sha = None, None
    if cfg.teacher.init == "canonical":
        arch = backbone.arch if backbone is not None else architecture_of(cfg.backbone)
        init = ensure_init(out, cfg.teacher, arch, [Path(r) for r in reuse])
        resolved = {**resolved, "init": init_record(out)}
        init_sha = resolved["init"]["sha256"]
    repair_manifest_tail(out)
    steps = cfg.tail_steps()
    listed = {e.id: e for e in read_manifest(out)} if (out / MANIFEST_NAME).is_file() else {}
    todo = [j for j in jobs if not all(j.entry_id(s) in listed for s in steps)]
    precision = zoo_precision(cfg)  # what check_or_save_config fingerprinted
    if todo and reuse:
        sources = [_ReuseSource(r) for r in reuse]
        left = []
        for job in todo:
            recipe = job_recipe(resolved, job)
            hit = next(((src, e) for src in sources if (e := src.entries_for(job, recipe, steps))), None)
            if hit is None:
                left.append(job)
            else:
                _copy_job(hit[0], hit[1], out, out / job.task / f"s{job.seed}", listed)
        todo = left
    if todo:
        _, needed = selected_specs(cfg)
        prefetch([s for s in needed if any(s.name in j.components for j in todo)])
        if backbone is None:
            backbone = load_backbone(cfg.backbone, cfg.runtime, progress=progress)
        specs = {s.name: s for s in needed}
        machine = cpu_info()
        if progress:
            print(f"[zoo] teachers train in {precision.name} ({precision.reason})", flush=True)
    bar = tqdm(total=len(jobs), desc=f"zoo {shard[0]}/{shard[1]}", unit="job", disable=not progress)
    bar.update(len(jobs) - len(todo))
    for job in todo:
        bar.set_description(f"zoo {job.id}")
        pairs, n_items = training_pairs(cfg, specs, job.components, job.seed, backbone.tokenizer)
        job_dir = out / job.task / f"s{job.seed}"
        _clear_scratch(job_dir)

        def report(step: int, loss: float) -> None:
            if step == 1 or step % 5 == 0 or step == cfg.teacher.steps:
                bar.set_postfix(step=f"{step}/{cfg.teacher.steps}", loss=f"{loss:.3f}")

        t0 = time.perf_counter()
        ckpts = train_teacher(
            backbone,
            pairs,
            cfg.teacher,
            job_dir,
            seed=stable_seed("zoo-teacher", job.id) % (1 << 63),
            init=init,
            init_seed=stable_seed("zoo-teacher-init", str(job.seed)) % (1 << 63)
            if cfg.teacher.init == "per_seed"
            else None,
            precision=precision.dtype,
            metadata={"task": job.task, "zoo_job": job.id},
            progress=report if progress else None,
        )
        seconds = time.perf_counter() - t0
        if [c.step for c in ckpts] != steps:  # pragma: no cover - train_teacher and tail_steps disagree
            raise ZooError(f"job {job.id}: expected checkpoints at steps {steps}, got {[c.step for c in ckpts]}")
        for c in ckpts:
            eid = job.entry_id(c.step)
            if eid in listed:  # listed by an earlier partial append; never list twice
                continue
            entry = ZooEntry(
                id=eid,
                task=job.task,
                family=job.family,
                tasks=job.components if job.mixed else (),
                seed=job.seed,
                step=c.step,
                path=c.path.relative_to(out).as_posix(),
                sha256=file_sha256(c.path / "adapter_model.safetensors"),
                train_loss=c.train_loss,
                backbone=cfg.backbone,
                extra={
                    "train_seconds": round(seconds, 2),
                    "n_train_items": n_items,
                    "device": str(backbone.device),
                    "precision": precision.name,
                    "cpu": machine,
                    "init": cfg.teacher.init,
                    **({"init_sha256": init_sha} if init_sha else {}),
                },
            )
            append_entry(out, entry)
            listed[eid] = entry
        bar.update(1)
    bar.close()
    return [listed[j.entry_id(s)] for j in jobs for s in steps if j.entry_id(s) in listed]


__all__ = [
    "CONFIG_NAME",
    "ZooConfig",
    "ZooJob",
    "build_zoo",
    "check_or_save_config",
    "job_recipe",
    "load_zoo_config",
    "parse_shard",
    "plan_jobs",
    "resolved_config",
    "sample_train",
    "shard_jobs",
    "zoo_precision",
]
