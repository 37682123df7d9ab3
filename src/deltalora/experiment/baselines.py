"""The baselines a user would try without a generator, as candidates of the experiment (``cfg.baselines``).

- **retrieve-and-merge** rows (``baselines.retrieval``): per generator seed, a Δ predictor trained on the
  training teachers' Δ and an index over them (:mod:`deltalora.retrieval`, saved as
  ``<run>/retrieval/index-s<seed>.safetensors`` and reused by a rerun); for each condition a generator of that
  seed is given, the top-k teachers by predicted Δ (``by: delta``) or by prompt embedding (``by: condition``),
  merged at their retrieval weights with the row's merge method.
- **multi-task LoRA** (``baselines.multitask``): one LoRA per zoo seed, trained with the teachers' recipe on the
  union of the training tasks' train splits (:func:`deltalora.zoo.build_multitask`, cached in the zoo).
- **Arrow** (``baselines.arrow``): PEFT's per-token routing over one expert per training task
  (:mod:`deltalora.eval.arrow`); a :class:`~deltalora.eval.arrow.Routed` candidate, scored by its own model.

A baseline never sees a held-out task: the predictor, the index, the multi-task LoRA and the Arrow experts are
all built from the training teachers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..eval.arrow import Routed
from ..lora import LoraWeights
from ..retrieval import RetrievalIndex, build_index, fit_delta_predictor, retrieve_adapter
from ..retrieval import predictor_cosines as retrieval_cosines
from ..zoo import build_multitask
from ..zoo.manifest import adapter_dir, last_teachers
from .candidates import Candidates
from .config import zoo_config


@dataclass
class Baselines:
    """What the baseline rows of one run are built from."""

    indexes: dict[int, RetrievalIndex] = field(default_factory=dict)  # generator seed -> index (with predictor)
    teachers: dict[str, LoraWeights] = field(default_factory=dict)  # training teacher id -> adapter
    multitask: dict[str, LoraWeights] = field(default_factory=dict)  # candidate name -> multi-task LoRA
    arrow: Routed | None = None
    report: dict = field(default_factory=dict)  # results.json's "baselines": predictor fit, budgets, experts


def _index_fingerprint(train_set, predictor, seed: int, encoder: str, form: str, probes: list) -> str:
    body = {
        "predictor": predictor.model_dump(mode="json"),
        "seed": seed,
        "teachers": sorted((e.id, e.sha256) for e in train_set.entries),
        "parts": train_set.condition_parts,
        "encoder": encoder,
        "n_prompts": train_set.n_prompts,
        "form": form,
        "probes": probes,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def cached_index(
    path: Path, train_set, predictor, seed: int, *, encoder: str, form: str, probes: list
) -> RetrievalIndex:
    """The retrieval index over ``train_set`` with a Δ predictor (``predictor``: a :class:`PredictorConfig`) trained
    with ``seed``, saved at ``path``: read back when a previous call trained the same one (same teachers, conditions,
    predictor settings, seed and Δ space ``probes``), trained now otherwise."""
    fp = _index_fingerprint(train_set, predictor, seed, encoder, form, probes)
    if path.is_file():
        index = RetrievalIndex.load(path)
        if (index.info or {}).get("fingerprint") == fp:
            return index
    t0 = time.perf_counter()
    pred, log = fit_delta_predictor(
        train_set,
        steps=predictor.steps,
        batch_size=predictor.batch_size,
        lr=predictor.lr,
        hidden=predictor.hidden,
        loss=predictor.loss,
        seed=seed,
    )
    log = {**log, "fingerprint": fp, "seconds": round(time.perf_counter() - t0, 2)}
    index = build_index(train_set, pred, info=log)
    index.save(path)
    return index


def _index(ctx, seed: int) -> RetrievalIndex:
    """The seed's retrieval index of the run (``<run>/retrieval/index-s<seed>.safetensors``)."""
    return cached_index(
        ctx.out / "retrieval" / f"index-s{seed}.safetensors",
        ctx.train_set,
        ctx.cfg.baselines.predictor,
        seed,
        encoder=ctx.cfg.train.encoder,
        form=ctx.conditioner.form,
        probes=[ctx.cfg.train.probes, ctx.cfg.train.representation],
    )


def _arrow_experts(ctx, seed: int) -> tuple[list[str], list[Path]]:
    """One expert per training task with its own teachers: its zoo seed-``seed`` teacher at the last step."""
    tasks = sorted({e.task for e in ctx.train_set.entries if not e.mixed})
    chosen = [t for task in tasks if (t := last_teachers(ctx.train_set.entries, task).get(seed)) is not None]
    return [e.id for e in chosen], [adapter_dir(ctx.zoo_dir, e) for e in chosen]


def build_multitask_baselines(cfg, zoo_dir: Path, tasks: Sequence[str], backbone, progress: bool) -> dict:
    """``{seed: MultitaskTeacher}`` for ``cfg.baselines.multitask`` (empty without it): trained on ``tasks`` (the
    run's single training tasks) with the teachers' recipe, or read back from the zoo's cache.

    The run calls it right after its zoo stage, while the process holds only the backbone: training it takes ~10 GB
    (batch 8 × 256 tokens on the 0.5B backbone), and after the generators and their teacher library are loaded that
    went past 24 GiB once. The baseline stage then reads the cached LoRA back."""
    b = cfg.baselines
    if not b.multitask:
        return {}
    return {
        seed: build_multitask(
            zoo_dir,
            zoo_config(cfg),
            sorted(tasks),
            steps=b.multitask.steps,
            seed=seed,
            backbone=backbone,
            progress=progress,
        )
        for seed in b.multitask.seeds
    }


def prepare_baselines(ctx, train_examples) -> Baselines:
    """Train or read back everything ``ctx.cfg.baselines`` asks for (timed as the "baselines" stage)."""
    b = ctx.cfg.baselines
    out = Baselines()
    if not b.rows():
        return out
    t0 = time.perf_counter()
    if b.retrieval:
        out.teachers = {e.id: ex.weights for e, ex in zip(ctx.train_set.entries, train_examples)}
        for seed in ctx.cfg.seeds:
            out.indexes[seed] = _index(ctx, seed)
        out.report["predictor"] = {
            str(s): {k: i.info.get(k) for k in ("train_cosine", "tail_loss", "steps", "loss", "seconds")}
            for s, i in out.indexes.items()
        }
        out.report["retrieval"] = {"k": b.k, "temperature": b.temperature}
    if b.multitask:
        tasks = sorted({e.task for e in ctx.train_set.entries if not e.mixed})
        info = {}
        for seed, mt in build_multitask_baselines(ctx.cfg, ctx.zoo_dir, tasks, ctx.backbone, ctx.progress).items():
            out.multitask[f"multitask/s{seed}"] = mt.weights(ctx.backbone.arch)
            info[str(seed)] = {"steps": mt.steps, "tasks": len(mt.tasks), "path": str(mt.path)}
        out.report["multitask"] = info
    if b.arrow:
        ids, dirs = _arrow_experts(ctx, b.arrow.expert_seed)
        out.arrow = Routed(tuple(dirs), b.arrow.top_k, b.arrow.temperature, b.arrow.batch_rows)
        out.report["arrow"] = {"experts": ids, "top_k": b.arrow.top_k, "temperature": b.arrow.temperature}
    ctx.stage("baselines", t0)
    return out


def baseline_candidates(ctx, base: Baselines, task: str, conditions: dict[int, torch.Tensor]) -> Candidates:
    """The baseline candidates for one task; ``conditions`` maps each generator seed to the [n, n_prompts, dim]
    conditions its generators are given for the task (retrieval answers the same conditions)."""
    b = ctx.cfg.baselines
    out: Candidates = {}
    for row, spec in b.retrieval.items():
        for seed, conds in conditions.items():
            for j, cond in enumerate(conds):
                w, _ = retrieve_adapter(
                    base.indexes[seed],
                    cond,
                    by=spec.by,
                    k=b.k,
                    temperature=b.temperature,
                    merge=spec.merge,
                    teachers=lambda hits: [base.teachers[h.id] for h in hits],
                    merger=ctx.merges.merge,
                    seed=seed,
                )
                out[f"{row}/s{seed}/g{j}"] = (row, w)
    for name, w in base.multitask.items():
        out[name] = ("multitask", w)
    if base.arrow is not None:
        out["arrow"] = ("arrow", base.arrow)
    return out


@torch.no_grad()
def predictor_cosines(base: Baselines, conditions: dict[int, torch.Tensor], oracle: torch.Tensor) -> list[float]:
    """Task-specific cosine of every predicted Δ̂ (each seed's predictor, each condition) to the task's oracle Δ."""
    out = []
    for seed, conds in conditions.items():
        index = base.indexes.get(seed)
        if index is None or index.predictor is None:
            continue
        out += retrieval_cosines(index.predictor, conds, oracle.float().expand(len(conds), -1), index.shared)
    return out


__all__ = ["Baselines", "baseline_candidates", "cached_index", "predictor_cosines", "prepare_baselines"]
