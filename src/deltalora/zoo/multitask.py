"""The multi-task LoRA baseline: ONE LoRA trained with the teachers' recipe on the union of the training tasks.

This is Text-to-LoRA's main baseline against a generated adapter. It is built by the zoo's own machinery
(:func:`~deltalora.zoo.train.train_teacher`, the zoo's precision, its canonical init) and cached inside the zoo:

- data: for every task, exactly the train items the zoo's seed-``seed`` teacher of that task trained on
  (:func:`~deltalora.zoo.build.sample_train` of the task built with the zoo's ``split_seed``), formatted as
  :func:`~deltalora.zoo.build.build_zoo` formats them; train_teacher shuffles the union;
- budget: by default the teachers' steps per task, ``teacher.steps × len(tasks)``, at the teachers' batch size
  and learning rate; ``warmup_steps`` (and the loss window ``checkpoint_every``) scale with the steps, and only
  the final checkpoint is kept — the baseline is one adapter, tail checkpoints are generator data;
- init: a canonical zoo's stored init (:func:`~deltalora.zoo.canonical.read_init`), so the baseline's ΔW lives in
  the teachers' coordinates; a ``per_seed`` zoo's init of seed ``seed``; a ``per_job`` zoo's own draw;
- cache: ``<zoo>/multitask/<key>/{adapter/, multitask.json}``, ``key`` a short hash of the zoo's recipe (as
  :func:`~deltalora.zoo.build.job_recipe` resolves it, without its task list, seeds and mixed pairs), the sorted
  tasks, the steps, the seed and the init's sha256. The directory is trained in a scratch directory and renamed
  at the end, under a per-key lock; a second call loads it and trains nothing. A killed build resumes from its
  last saved training state (every 25 steps, ``<zoo>/multitask/.<key>.resume``), bit-identical to an unbroken one.

The zoo's ``manifest.jsonl`` and ``zoo_config.json`` are only read: the config given must be the one the zoo was
built with (compared, never saved), so a zoo being built meanwhile stays valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backbones import load_backbone
from ..config import parse_overrides
from ..lora import LoraWeights, load_adapter
from ..lora.adapter_io import WEIGHTS_NAME
from ..paths import atomic_dir, atomic_write_bytes, file_lock
from ..tasks import prefetch, stable_seed
from .build import (
    ZooConfig,
    ZooJob,
    _diff_keys,
    _legacy_init,
    _legacy_precision,
    job_recipe,
    load_zoo_config,
    resolved_config,
    selected_specs,
    training_pairs,
    zoo_precision,
)
from .canonical import init_record, read_init
from .manifest import CONFIG_NAME, ZooError, file_sha256
from .train import TeacherTrainConfig, train_teacher

MULTITASK_DIR = "multitask"  # <zoo>/multitask/<key>/
ADAPTER_DIR = "adapter"  # the PEFT directory inside a key's directory
INFO_NAME = "multitask.json"  # beside it
_VERSION = 1  # bump when what a key's adapter depends on changes


@dataclass(frozen=True)
class MultitaskTeacher:
    """A built (or cached) multi-task LoRA: ``path`` is its PEFT directory, ``info`` its ``multitask.json``."""

    path: Path
    tasks: tuple[str, ...]
    steps: int
    seed: int
    info: dict = field(default_factory=dict, compare=False)
    cached: bool = field(default=False, compare=False)  # loaded from the zoo's cache, nothing trained

    def weights(self, arch=None) -> LoraWeights:
        """The adapter as :class:`~deltalora.lora.LoraWeights` (float32; ``arch`` checks it against a backbone)."""
        return load_adapter(self.path, arch)


def multitask_train_config(teacher: TeacherTrainConfig, steps: int) -> TeacherTrainConfig:
    """The teachers' recipe stretched to ``steps``: same batch size and lr, ``warmup_steps`` and the loss window
    ``checkpoint_every`` scaled by ``steps / teacher.steps``, one checkpoint (the last)."""
    ratio = steps / teacher.steps
    warmup = max(1, round(teacher.warmup_steps * ratio)) if teacher.warmup_steps else 0
    window = max(1, min(steps, round(teacher.checkpoint_every * ratio)))
    return teacher.model_copy(
        update={"steps": steps, "warmup_steps": min(warmup, steps), "checkpoint_every": window, "checkpoints": 1}
    )


def _saved_resolved(zoo: Path) -> dict:
    """The zoo's saved resolved config as this version reads it (old spellings normalised), without its init."""
    path = zoo / CONFIG_NAME
    if not path.is_file():
        raise ZooError(f"{zoo}: not a zoo directory (no {CONFIG_NAME}); build the zoo with `deltalora zoo build` first")
    try:
        saved = _legacy_init(_legacy_precision(json.loads(path.read_text(encoding="utf-8"))))
    except (json.JSONDecodeError, AttributeError, TypeError):
        raise ZooError(f"{path}: not a valid zoo config; restore it or rebuild the zoo") from None
    if not isinstance(saved, dict):
        raise ZooError(f"{path}: not a valid zoo config; restore it or rebuild the zoo")
    return {k: v for k, v in saved.items() if k != "init"}


def _check_config(cfg: ZooConfig, zoo: Path) -> dict:
    """``cfg``'s resolved config, which must be the one the zoo was built with (read-only: nothing is saved)."""
    resolved = resolved_config(cfg)
    saved = _saved_resolved(zoo)
    if saved != resolved:
        diff = _diff_keys(saved, resolved)
        raise ZooError(
            f"{zoo}: this zoo was built with a different config (differs in {', '.join(diff[:4])}"
            f"{' ...' if len(diff) > 4 else ''}); pass the config (and --set overrides) the zoo was built with"
        )
    return resolved


def _pick_tasks(cfg: ZooConfig, zoo: Path, tasks: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",")]
    names = tuple(sorted({str(t).strip() for t in tasks if str(t).strip()}))
    if not names:
        raise ZooError(f"{zoo}: a multi-task LoRA needs at least one task; name some of the zoo's tasks")
    single = [s.name for s in selected_specs(cfg)[0]]
    unknown = [t for t in names if t not in single]
    if unknown:
        shown = ", ".join(single[:8]) + (" ..." if len(single) > 8 else "")
        raise ZooError(
            f"task {unknown[0]!r} is not one of the single tasks of zoo {zoo} ({shown}); pick tasks the zoo has"
        )
    return names


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_lock = file_lock


RESUME_EVERY = 25  # steps between saved training states (~0.2 s each for r8 all-7 on the 0.5B; a step is ~5 s)


def _clear_scratch(final: Path) -> None:
    """Remove scratch dirs a killed build of this key left (``.<key>.tmp-*`` / ``.<key>.old-*``); under its lock."""
    for p in final.parent.glob(f".{final.name}.*"):
        if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)


def _load_cached(final: Path, recipe_sha: str, tasks: tuple[str, ...], steps: int, seed: int) -> MultitaskTeacher:
    info_path = final / INFO_NAME
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise ZooError(f"{info_path}: missing or not valid JSON; delete {final} to rebuild it") from None
    if not isinstance(info, dict) or info.get("recipe_sha256") != recipe_sha:
        raise ZooError(f"{info_path}: records another recipe than its directory's key; delete {final} to rebuild it")
    weights = final / ADAPTER_DIR / WEIGHTS_NAME
    if not weights.is_file() or file_sha256(weights) != info.get("adapter_sha256"):
        raise ZooError(f"{weights}: missing or its sha256 differs from {INFO_NAME}'s; delete {final} to rebuild it")
    return MultitaskTeacher(final / ADAPTER_DIR, tasks, steps, seed, info, cached=True)


def build_multitask(
    zoo_dir: str | Path,
    cfg: ZooConfig,
    tasks: Sequence[str],
    *,
    steps: int | None = None,
    seed: int = 0,
    backbone=None,
    progress: bool = True,
) -> MultitaskTeacher:
    """One LoRA trained with the teachers' recipe on the union of ``tasks``' seed-``seed`` train items (see the
    module docstring), cached in ``zoo_dir``; the cached one when it is there.

    ``cfg`` is the zoo's config (checked against its ``zoo_config.json``); ``tasks`` a subset of its single tasks
    (any order); ``steps`` defaults to ``cfg.teacher.steps × len(tasks)``, the teachers' budget per task, and
    ``warmup_steps`` scales with it; only the final checkpoint is kept. ``seed`` must be one of the zoo's seeds.
    ``backbone`` (optional) is an already loaded backbone; by default ``cfg.backbone`` is loaded, only if the
    LoRA still has to be trained.
    """
    from tqdm.auto import tqdm

    zoo = Path(zoo_dir)
    if not zoo.is_dir():
        raise ZooError(f"{zoo}: no such zoo directory; build the zoo with `deltalora zoo build` first")
    resolved = _check_config(cfg, zoo)
    names = _pick_tasks(cfg, zoo, tasks)
    if seed not in cfg.seeds:
        raise ZooError(
            f"seed {seed} is not one of zoo {zoo}'s seeds {cfg.seeds}; pick a seed the zoo has teachers of (their "
            "train items are the data)"
        )
    n_steps = cfg.teacher.steps * len(names) if steps is None else int(steps)
    if n_steps < 1:
        raise ZooError(f"steps {steps}: a multi-task LoRA needs at least one step")
    tcfg = multitask_train_config(cfg.teacher, n_steps)
    init_sha = None
    if cfg.teacher.init == "canonical":
        rec = init_record(zoo)
        if rec is None or not isinstance(rec.get("sha256"), str):
            raise ZooError(
                f"{zoo}: a canonical zoo without its stored init yet; let `deltalora zoo build` start (its first "
                "step writes the init), then build the multi-task LoRA"
            )
        resolved = {**resolved, "init": rec}
        init_sha = rec["sha256"]
    precision = zoo_precision(cfg)  # what the zoo fingerprinted (resolved_config) and build_zoo trains in
    job = ZooJob("+".join(names), "multitask", names, seed)
    recipe = {
        "version": _VERSION,
        "zoo": job_recipe(resolved, job),  # the zoo's config less tasks/seeds/mixed, these tasks' specs, init sha
        "tasks": list(names),
        "steps": n_steps,
        "seed": seed,
        "init": init_sha,
        "train": tcfg.model_dump(mode="json"),
    }
    recipe_sha = _digest(recipe)
    key = recipe_sha[:16]
    final = zoo / MULTITASK_DIR / key
    if (final / INFO_NAME).is_file():
        return _load_cached(final, recipe_sha, names, n_steps, seed)
    with _lock(zoo / MULTITASK_DIR / f".{key}.lock"):  # two callers of one key: one trains, the other reads
        if (final / INFO_NAME).is_file():
            return _load_cached(final, recipe_sha, names, n_steps, seed)
        _clear_scratch(final)
        _, needed = selected_specs(cfg)
        specs = {s.name: s for s in needed}
        prefetch([specs[n] for n in names])
        if backbone is None:
            backbone = load_backbone(cfg.backbone, cfg.runtime, progress=progress)
        init, init_seed = None, None
        if init_sha is not None:
            init = read_init(zoo, backbone.arch)  # checked against the record's sha256
        elif cfg.teacher.init == "per_seed":
            init_seed = stable_seed("zoo-teacher-init", str(seed)) % (1 << 63)  # as build_zoo: the seed's teachers'
        pairs, n_items = training_pairs(cfg, specs, names, seed, backbone.tokenizer)
        if progress:
            print(
                f"[zoo] multi-task LoRA on {len(names)} tasks ({len(pairs)} items, seed {seed}): {n_steps} steps "
                f"in {precision.name}",
                flush=True,
            )
        bar = tqdm(total=n_steps, desc=f"multitask {key}", unit="step", disable=not progress)

        def report(step: int, loss: float) -> None:
            bar.update(step - bar.n)  # a resumed build starts past step 1
            if step == 1 or step % 5 == 0 or step == n_steps:
                bar.set_postfix(loss=f"{loss:.3f}")

        with atomic_dir(final) as tmp:
            t0 = time.perf_counter()
            try:
                ckpts = train_teacher(
                    backbone,
                    pairs,
                    tcfg,
                    tmp,
                    seed=stable_seed("zoo-multitask", job.id) % (1 << 63),
                    init=init,
                    init_seed=init_seed,
                    precision=precision.dtype,
                    metadata={"task": job.task, "zoo_multitask": key},
                    progress=report if progress else None,
                    # hours on CPU for a large suite: a killed build resumes (the state is keyed by the recipe)
                    resume_dir=zoo / MULTITASK_DIR / f".{key}.resume",
                    save_every=RESUME_EVERY,
                )
            finally:
                bar.close()
            seconds = time.perf_counter() - t0
            if [c.step for c in ckpts] != [n_steps]:  # pragma: no cover - train_teacher keeps the last step
                raise ZooError(f"multi-task LoRA {key}: expected one checkpoint at step {n_steps}")
            os.replace(ckpts[0].path, tmp / ADAPTER_DIR)
            info = {
                "key": key,
                "recipe_sha256": recipe_sha,
                "tasks": list(names),
                "seed": seed,
                "steps": n_steps,
                "budget": {
                    "steps": n_steps,
                    "steps_per_task": n_steps / len(names),
                    "teacher_steps": cfg.teacher.steps,
                    "batch_size": tcfg.batch_size,
                    "examples": n_steps * tcfg.batch_size,
                    "lr": tcfg.lr,
                    "warmup_steps": tcfg.warmup_steps,
                },
                "n_train_items": n_items,
                "train_loss": ckpts[0].train_loss,
                "train_seconds": round(seconds, 2),
                "precision": precision.name,
                "init": cfg.teacher.init,
                "init_sha256": init_sha,
                "adapter_sha256": file_sha256(tmp / ADAPTER_DIR / WEIGHTS_NAME),
                "backbone": cfg.backbone,
                "device": str(backbone.device),
            }
            atomic_write_bytes(tmp / INFO_NAME, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    return MultitaskTeacher(final / ADAPTER_DIR, names, n_steps, seed, info)


def multitask_from_config(
    config: str | Path,
    zoo: str | Path,
    tasks: str | Sequence[str],
    steps: int | None = None,
    seed: int = 0,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """``deltalora zoo multitask``: :func:`build_multitask` for the zoo YAML ``config`` (with ``--set``-style
    ``overrides``) and ``tasks`` as ``"a,b,c"``; a summary: ``path``, ``tasks``, ``steps``, ``seed``, ``cached``,
    ``budget``, ``train_seconds``."""
    cfg = load_zoo_config(config, parse_overrides(list(overrides)))
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    if not Path(zoo).is_dir():  # before any backbone or task loads
        raise ZooError(f"--zoo {zoo}: no such zoo directory; build the zoo with `deltalora zoo build` first")
    t = build_multitask(zoo, cfg, tasks, steps=steps, seed=seed, progress=progress)
    return {
        "path": str(t.path),
        "tasks": list(t.tasks),
        "steps": t.steps,
        "seed": t.seed,
        "cached": t.cached,
        "budget": t.info.get("budget", {}),
        "train_seconds": t.info.get("train_seconds"),
        "precision": t.info.get("precision"),
    }


__all__ = ["MultitaskTeacher", "build_multitask", "multitask_from_config", "multitask_train_config"]
