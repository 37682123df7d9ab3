"""``deltalora run``: the held-out experiment end to end, every stage resumable.

    backbone ─► zoo (build/reuse) ─► teacher Δ (cache) ─► conditions ─► generators: weight-only (λ=0) and
    Δ-augmented, × seeds ─► adapters for the held-out tasks from their condition pools ─► eval + Δ-cosine
    to the oracle ─► report.md
                                 └─► adapters for seen tasks from held-back prompts ─► the same scores

Held-out tasks (and mixed teachers with a held-out component) never reach generator training; their
teachers are used only as the oracle row, and only their *condition* split conditions the generators.

Seen tasks (``cfg.seen``) measure fit rather than generalisation: every training task's condition pool is split
(:meth:`~deltalora.conditions.ConditionPool.split`, a function of the task and ``seen.seed``), the generators
train on the kept part only (``Context.conditioner``), and for ``seen.tasks`` training tasks, stratified by family
(:func:`~deltalora.training.choose_seen`), adapters are generated from the held-back part
(``Context.seen_conditioner``: prompts no generator saw) and scored like a held-out task, the task's own
training teachers as the oracle. Held-out tasks keep their whole pools.

Words: a *variant* is a generator configuration (:data:`VARIANTS`: weight-only, λ = 0, and Δ-augmented),
trained once per seed; a *candidate* is one adapter evaluated on a held-out task; a *row* of the report
groups a task's candidates of one kind. Rows per held-out task: base; average merge of the training
teachers (exact mean ΔW); weight-only generator; Δ-augmented generator; the task's own teachers (oracle);
Δ-augmented generator on random conditions. Accuracy is over ``seeds × adapters_per_seed`` generated
adapters (every oracle teacher).

Everything lands in the output directory: ``zoo/`` (unless ``zoo_dir``), ``deltas/`` (Δ cache),
``generators/<variant>/seed<N>/`` (training dirs), ``eval/<task>/<key>.json`` (each candidate's score,
reused by a rerun: :mod:`.eval_cache`), ``timing.json`` (seconds per stage summed over every call:
:mod:`.timing`), ``results.json``, ``report.md``, ``figures/``, ``tsne_input.npz`` (:mod:`.report`).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..backbones import cpu_info, describe_machine, load_backbone
from ..conditions import Conditioner, load_encoder, pools_from_tasks, split_pools
from ..config import RuntimeConfig
from ..deltas import (
    DeltaCache,
    DeltaProbe,
    DeltaSpec,
    TaskProbes,
    compute_deltas,
    remove_shared,
    resolve_probes,
    sources_from_manifest,
)
from ..errors import ConfigError
from ..eval.arrow import Routed, evaluate_routed
from ..eval.runner import BASE, evaluate_task
from ..generators.checkpoint import load_generator
from ..lora import LoraWeights, weights_hash
from ..tasks import build_task
from ..training import TeacherDataset, choose_heldout, choose_seen, split_entries, train_generator, zoo_tasks
from ..training.logs import read_log, tail_mean
from ..training.loop import FIT_NAME
from ..training.losses import cosines_to_mean
from ..zoo import build_zoo, read_manifest
from ..zoo.build import holdout_groups, selected_specs, zoo_precision
from .baselines import Baselines, baseline_candidates, build_multitask_baselines, prepare_baselines
from .baselines import predictor_cosines as baseline_predictor_cosines
from .candidates import Candidates, average_merge, generate, random_conditions
from .config import BUILTIN_ROWS, RunConfig, zoo_config
from .eval_cache import EvalCache
from .merge_cache import MergeCache
from .report import write_report
from .timing import StageClock

VARIANTS = ("weight_only", "delta")  # the two generator variants every run trains once per seed (+ cfg.compare)
ROWS = BUILTIN_ROWS
ROW_LABELS = {
    "base": "base model",
    "average_merge": "mean of training teachers (ΔW average)",
    "weight_only": "weight-only generator (λ=0, DnD)",
    "delta": "Δ-augmented generator",
    "oracle": "held-out task's own teachers (oracle)",
    "delta_random_condition": "Δ-augmented, random conditions",
}
SEEN_ROW_LABELS = {**ROW_LABELS, "oracle": "seen task's own teachers (oracle)"}  # the seen-task section's rows


@dataclass
class Context:
    """What every stage of one run shares."""

    cfg: RunConfig
    out: Path
    backbone: object
    zoo_dir: Path
    heldout: list[str]
    tasks: dict
    conditioner: Conditioner
    train_set: TeacherDataset
    heldout_set: TeacherDataset
    cache: DeltaCache
    clock: StageClock
    progress: bool = True
    machine: dict | None = None  # where this call ran and the teachers' effective precision (results.json)
    seen: list[str] = field(default_factory=list)  # training tasks scored from held-back prompts (cfg.seen)
    seen_conditioner: Conditioner | None = None  # the held-back parts of the seen tasks' condition pools
    datasets: dict = field(default_factory=dict)  # (probes, representation) -> training set of a variant's Δ

    def stage(self, name: str, t0: float) -> None:
        self.clock.add(name, t0)

    @property
    def merges(self) -> MergeCache:
        """The run's dense merges (the TIES retrieval rows) under ``out/merges``: a resumed run reads them back."""
        return MergeCache(self.out / "merges")


def _say(ctx_or_flag, msg: str) -> None:
    if getattr(ctx_or_flag, "progress", ctx_or_flag):  # a context (run or compose) or a plain flag
        print(msg, flush=True)


def zoo_stage(cfg, out: Path, progress: bool, backbone, clock: StageClock):
    """The backbone (loaded unless given) and the zoo of ``cfg`` (a run or compose config: ``zoo``, ``zoo_set``,
    ``zoo_dir``) built or reused: (zoo config, backbone, zoo dir, manifest entries)."""
    zoo_cfg = zoo_config(cfg)
    t0 = time.perf_counter()
    backbone = backbone or load_backbone(zoo_cfg.backbone, zoo_cfg.runtime, progress=progress)
    clock.add("load backbone", t0)
    zoo_dir = Path(cfg.zoo_dir) if cfg.zoo_dir else out / "zoo"
    t0 = time.perf_counter()
    _say(progress, f"[zoo] building / reusing {zoo_dir}")
    build_zoo(zoo_cfg, zoo_dir, progress=progress, backbone=backbone)
    clock.add("zoo build", t0)
    return zoo_cfg, backbone, zoo_dir, read_manifest(zoo_dir)


def teacher_delta_stage(cfg, zoo_cfg, backbone, zoo_dir: Path, out: Path, progress: bool, clock: StageClock):
    """The zoo's tasks and every teacher's Δ on ``cfg.train``'s probes and representation, into ``out/deltas``:
    (tasks by name, resolved probes, the Δ cache). A teacher with a non-finite Δ is a one-line error."""
    _, needed = selected_specs(zoo_cfg)
    tasks = {s.name: build_task(s, seed=zoo_cfg.split_seed) for s in needed}
    probes = resolve_probes(cfg.train.probes, tasks, backbone.tokenizer)
    t0 = time.perf_counter()
    cache = DeltaCache(out / "deltas")
    sources = sources_from_manifest(zoo_dir)
    _say(progress, f"[deltas] teacher Δ of {len(sources)} adapters ({cfg.train.probes}, {cfg.train.representation})")
    report = compute_deltas(
        backbone,
        sources,
        probes,
        cfg.train.representation,
        cache,
        batch_adapters=cfg.delta_batch_adapters,
        progress=progress,
    )
    if report.broken:
        raise ConfigError(
            f"{len(report.broken)} zoo adapters have non-finite Δ (first: {report.broken[0].id}); retrain or drop "
            f"them from {zoo_dir}"
        )
    clock.add("teacher Δ", t0)
    return tasks, probes, cache


def machine_of(backbone, zoo_cfg) -> dict:
    """Where this call ran and the zoo teachers' effective precision (results.json's ``machine``)."""
    teacher = zoo_precision(zoo_cfg)  # the zoo's saved config matched it, so its teachers trained in this
    info = cpu_info()
    return {
        "description": describe_machine(info),
        "cpu": info,
        "device": str(backbone.device),
        "teacher_precision": teacher.name,
        "teacher_precision_reason": teacher.reason,
    }


def prepare(cfg: RunConfig, out: str | Path, progress: bool = True, backbone=None) -> Context:
    """Backbone, zoo, teacher Δ, conditions and the two task-level splits (all reused when already there)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(out)
    zoo_cfg, backbone, zoo_dir, entries = zoo_stage(cfg, out, progress, backbone, clock)
    heldout = (
        sorted(cfg.heldout) if cfg.heldout else choose_heldout(zoo_tasks(entries), cfg.heldout_count, cfg.heldout_seed)
    )
    singles = {e.task for e in entries if not e.mixed}
    no_oracle = [t for t in heldout if t not in singles]
    if no_oracle:
        raise ConfigError(
            f"held-out task(s) {no_oracle} have no single-task teacher in {zoo_dir} (the oracle row); hold out tasks "
            "of the zoo"
        )
    t0 = time.perf_counter()  # the zoo's own baseline first, while this process holds nothing but the backbone
    training = {e.task for e in split_entries(entries, heldout)["train"] if not e.mixed}
    groups = holdout_groups(zoo_cfg)
    leaks = sorted(f"{h} ~ {t}" for h in heldout for t in training if groups.get(h, h) == groups.get(t, t))
    if leaks:
        raise ConfigError(
            f"held-out and training tasks share a group ({', '.join(leaks)}): siblings are near-duplicates; hold out "
            "every task of a group, or none"
        )
    if build_multitask_baselines(cfg, zoo_dir, sorted(training), backbone, progress):
        clock.add("multi-task LoRA", t0)
    tasks, probes, cache = teacher_delta_stage(cfg, zoo_cfg, backbone, zoo_dir, out, progress, clock)

    t0 = time.perf_counter()
    encoder = load_encoder(cfg.train.encoder, RuntimeConfig(device=zoo_cfg.runtime.device), progress=progress)
    pools = pools_from_tasks(tasks.values())
    held: dict = {}
    if cfg.seen.tasks:  # generators train on the kept part of every training task's pool, never the held-back one
        pools, held = split_pools(pools, [t for t in pools if t not in heldout], cfg.seen.fraction, cfg.seen.seed)
    n_prompts, form = cfg.train.n_prompts, cfg.train.condition_form
    conditioner = Conditioner(encoder, pools, n_prompts, form)
    spec = DeltaSpec.for_backbone(backbone, probes, cfg.train.representation)
    task_probes = probes if isinstance(probes, TaskProbes) else None
    common = dict(heldout=heldout, cache=cache, arch=backbone.arch, task_probes=task_probes)
    train_set = TeacherDataset(zoo_dir, conditioner, spec, split="train", **common)
    heldout_set = TeacherDataset(zoo_dir, conditioner, spec, split="heldout", **common)
    seen = choose_seen(train_set.entries, cfg.seen.tasks, cfg.seen.seed)
    seen_conditioner = Conditioner(encoder, {t: held[t] for t in seen}, n_prompts, form) if seen else None
    clock.add("conditions", t0)
    machine = machine_of(backbone, zoo_cfg)
    return Context(
        cfg,
        out,
        backbone,
        zoo_dir,
        heldout,
        tasks,
        conditioner,
        train_set,
        heldout_set,
        cache,
        clock,
        progress,
        machine,
        seen,
        seen_conditioner,
    )


def rows(cfg: RunConfig) -> list[str]:
    """The report's rows for ``cfg``: the built-in ones, ``cfg.baselines``' after the average merge and
    ``cfg.compare``'s generators after the Δ-augmented one."""
    out = list(ROWS)
    at = out.index("average_merge") + 1
    out = out[:at] + cfg.baselines.rows() + out[at:]
    at = out.index("delta") + 1
    return out[:at] + list(cfg.compare) + out[at:]


def baseline_labels(cfg: RunConfig) -> dict[str, str]:
    b = cfg.baselines
    out = {
        name: r.label or f"{'Δ' if r.by == 'delta' else 'condition'}-retrieval, top {b.k} + {r.merge} merge"
        for name, r in b.retrieval.items()
    }
    if b.multitask:
        out["multitask"] = "multi-task LoRA (union of the training tasks)"
    if b.arrow:
        out["arrow"] = f"Arrow routing (PEFT, top {b.arrow.top_k} of the training task experts)"
    return out


def _overrides_text(over: dict, prefix: str = "") -> str:
    """``{"lam": {"target": 1}, "weight_scale": 0}`` -> ``"lam.target=1, weight_scale=0"``."""
    parts = []
    for k, v in over.items():
        parts.append(_overrides_text(v, f"{prefix}{k}.") if isinstance(v, dict) else f"{prefix}{k}={v}")
    return ", ".join(p for p in parts if p)


def row_labels(cfg: RunConfig, base: dict[str, str]) -> dict[str, str]:
    extra = {
        k: c.label or f"{c.generator} generator ({_overrides_text(c.train) or 'λ=0'})" for k, c in cfg.compare.items()
    }
    return {r: {**base, **baseline_labels(cfg), **extra}[r] for r in rows(cfg)}


def dataset_for(ctx: Context, train_cfg) -> TeacherDataset:
    """The run's training split with the teacher Δ of this variant's probes and representation (computed into the
    run's Δ cache when missing); the run's own training set when they are the run's, or when the variant has no Δ
    loss (it never reads Δ)."""
    same = (train_cfg.probes, train_cfg.representation) == (ctx.cfg.train.probes, ctx.cfg.train.representation)
    if same or not train_cfg.uses_delta:
        return ctx.train_set
    key = (train_cfg.probes, train_cfg.representation)
    if key in ctx.datasets:
        return ctx.datasets[key]
    probes = resolve_probes(train_cfg.probes, ctx.tasks, ctx.backbone.tokenizer)
    compute_deltas(
        ctx.backbone,
        sources_from_manifest(ctx.zoo_dir),
        probes,
        train_cfg.representation,
        ctx.cache,
        batch_adapters=ctx.cfg.delta_batch_adapters,
        progress=ctx.progress,
    )
    spec = DeltaSpec.for_backbone(ctx.backbone, probes, train_cfg.representation)
    ctx.datasets[key] = TeacherDataset(
        ctx.zoo_dir,
        ctx.conditioner,
        spec,
        split="train",
        heldout=ctx.heldout,
        cache=ctx.cache,
        arch=ctx.backbone.arch,
        task_probes=probes if isinstance(probes, TaskProbes) else None,
    )
    return ctx.datasets[key]


def train_variants(ctx: Context) -> dict[tuple[str, int], Path]:
    """Train (or resume, or reuse) every variant's generator (weight-only, Δ-augmented, ``compare``'s) per seed."""
    dirs = {}
    for variant in ctx.cfg.variants:
        for seed in ctx.cfg.seeds:
            d = ctx.out / "generators" / variant / f"seed{seed}"
            _say(ctx, f"[train] {variant} seed {seed} -> {d}")
            t0 = time.perf_counter()
            tcfg = ctx.cfg.arm_config(variant, seed)
            train_generator(
                tcfg,
                dataset_for(ctx, tcfg),
                ctx.backbone,
                d,
                progress=ctx.progress,
                meta={"encoder": ctx.cfg.train.encoder, "heldout_tasks": ctx.heldout},
                tasks=ctx.tasks,
            )
            ctx.stage(f"train {variant}", t0)
            dirs[(variant, seed)] = d
    return dirs


def own_teachers(teachers: TeacherDataset, task: str) -> list[int]:
    """Positions in ``teachers`` of the task's own (non-mixed) teachers: its oracle row."""
    return [i for i, e in enumerate(teachers.entries) if e.task == task and not e.mixed]


def task_conditions(ctx: Context, conditioner: Conditioner, task: str, section: str, n: int) -> dict[int, torch.Tensor]:
    """Per generator seed, the first ``n`` of the conditions ([n, n_prompts, dim]) its adapters for ``task`` are
    generated from (the same ones for every variant and baseline of the seed)."""
    return {
        seed: torch.stack([conditioner.sample(task, seed=seed, epoch=0, key=f"{section}/{j}") for j in range(n)])
        for seed in ctx.cfg.seeds
    }


def task_candidates(
    ctx: Context,
    gens: dict[tuple[str, int], torch.nn.Module],
    task: str,
    teachers: TeacherDataset,
    conditioner: Conditioner,
    merged: LoraWeights | None = None,
    section: str = "heldout",
    baselines: Baselines | None = None,
) -> Candidates:
    """Every candidate for one task of a report ``section``: base, the task's own teachers in ``teachers`` (oracle),
    generated from conditions of ``conditioner``'s pool for it (real and random conditions), merge, and the
    ``baselines`` (retrieval answers the same conditions as the generators).

    Held-out: the held-out teachers and the whole pool; seen: the training teachers and the held-back part.
    """
    cfg = ctx.cfg
    candidates: Candidates = {BASE: ("base", None)}
    for i in own_teachers(teachers, task):
        candidates[f"oracle/{teachers.entries[i].id}"] = ("oracle", teachers.example(i, 0).weights)
    all_conds = task_conditions(ctx, conditioner, task, section, cfg.adapters_per_seed)
    for seed in cfg.seeds:
        conds = all_conds[seed]
        for variant in cfg.variants:
            for j, w in enumerate(generate(gens[(variant, seed)], conds)):
                candidates[f"{variant}/s{seed}/g{j}"] = (variant, w)
        if cfg.random_condition:
            rand = random_conditions(conds[0], cfg.adapters_per_seed, seed)
            for j, w in enumerate(generate(gens[("delta", seed)], rand)):
                candidates[f"delta_random_condition/s{seed}/g{j}"] = ("delta_random_condition", w)
    if merged is not None:
        candidates["average_merge"] = ("average_merge", merged)
    if baselines is not None:
        n = cfg.baselines.adapters_per_seed or cfg.adapters_per_seed
        candidates.update(baseline_candidates(ctx, baselines, task, {s: c[:n] for s, c in all_conds.items()}))
    return candidates


CANDIDATES_PER_EVAL_CALL = 4


def score(ctx: Context, task: str, candidates: Candidates) -> dict[str, dict]:
    """Accuracy and per-item scores (``scores``) of every candidate on the task's eval split; each kept in the run's
    :class:`EvalCache` (an entry cached without per-item scores is scored again)."""
    ev = ctx.cfg.eval
    cache = EvalCache(ctx.out, task, ev, ctx.backbone)
    keys = {name: w.key(cache.salt) if isinstance(w, Routed) else cache.key(w) for name, (_, w) in candidates.items()}
    results = {name: r for name in candidates if (r := cache.get(keys[name])) is not None}
    routed = [n for n in candidates if n not in results and isinstance(candidates[n][1], Routed)]
    todo = [n for n in candidates if n not in results and n not in routed]
    # one evaluate_task call per LoRA layout (the average merge has a larger rank)
    groups: dict[tuple, list[str]] = {}
    for n in sorted(todo, key=lambda n: candidates[n][1] is None):  # the base model (no adapter) joins the first group
        w = candidates[n][1]
        key = w.layout.signature if w is not None else next((k for k in groups), ())
        groups.setdefault(key, []).append(n)
    # a few candidates per call, each call's results cached as it ends: a held-out task of the large preset has
    # ~35 candidates (tens of minutes on CPU), and a kill must not lose them all. Batches are adapter-major, so
    # this costs nothing in batching.
    calls = [
        names[i : i + CANDIDATES_PER_EVAL_CALL]
        for names in groups.values()
        for i in range(0, len(names), CANDIDATES_PER_EVAL_CALL)
    ]
    for names in calls:
        _say(ctx, f"[eval] {task}: {len(names)} candidates × {ev.limit or 'all'} items ({len(todo)} to score)")
        t0 = time.perf_counter()
        res = evaluate_task(
            ctx.backbone,
            ctx.tasks[task],
            {n: candidates[n][1] for n in names},
            split=ev.split,
            limit=ev.limit,
            batch_rows=ev.batch_rows,
            precision=ev.precision,
        )
        for n in names:
            r = {**res["arms"][n], "kind": res["kind"]}
            cache.put(keys[n], r)
            results[n] = r
        ctx.stage("evaluate", t0)
    for n in routed:  # Arrow: its own model (experts injected by PEFT), scored as that model's only arm
        _say(ctx, f"[eval] {task}: {n} (routed) × {ev.limit or 'all'} items")
        t0 = time.perf_counter()
        res = evaluate_routed(
            ctx.backbone, ctx.tasks[task], candidates[n][1], n, split=ev.split, limit=ev.limit, precision=ev.precision
        )
        r = {**res["arms"][n], "kind": res["kind"]}
        cache.put(keys[n], r)
        results[n] = r
        ctx.stage("evaluate routed", t0)
    return results


@torch.no_grad()
def delta_cosines(
    ctx: Context,
    probe: DeltaProbe,
    task: str,
    candidates: Candidates,
    shared: torch.Tensor,
    teachers: TeacherDataset | None = None,
) -> tuple[dict[str, float], dict[str, float], torch.Tensor, dict[str, torch.Tensor]]:
    """Cosine of every adapter candidate's Δ to the oracle Δ (the mean Δ of the task's own teachers in ``teachers``,
    default the held-out ones): raw, and task-specific — with ``shared`` (the training teachers' mean Δ) projected
    out of both. Every fine-tune shifts along one common direction, and the raw cosine credits an adapter for it
    even when it carries nothing of the task.
    """
    teachers = ctx.heldout_set if teachers is None else teachers
    oracle = torch.stack([teachers.example(i, 0).delta for i in own_teachers(teachers, task)]).mean(0)
    names = [n for n, (_, w) in candidates.items() if isinstance(w, LoraWeights)]  # not base, not routed
    # each candidate's Δ is kept in the run's Δ cache under its content hash: a resumed run probes only new ones
    spec = DeltaSpec.for_backbone(ctx.backbone, probe.task_probes or probe.probes, probe.rep.spec)
    if probe.task_probes is not None:
        spec = spec.with_probes(probe.task_probes.probe_set((task,)))
    keys = {n: spec.key_for(f"weights:{weights_hash(candidates[n][1])}:{probe.dtype}") for n in names}
    deltas: dict[str, torch.Tensor] = {n: hit.tensor for n in names if (hit := ctx.cache.get(keys[n])) is not None}
    by_layout: dict[tuple, list[str]] = {}
    for n in names:
        if n not in deltas:
            by_layout.setdefault(candidates[n][1].layout.signature, []).append(n)
    k = ctx.cfg.delta_batch_adapters
    for group in by_layout.values():
        for i in range(0, len(group), k):
            chunk = group[i : i + k]
            groups = [(task,)] * len(chunk) if probe.task_probes is not None else None  # the task's own probes
            d = probe(LoraWeights.stack([candidates[n][1] for n in chunk]), groups).detach().cpu().float()
            for n, v in zip(chunk, d):
                ctx.cache.put(keys[n], v.clone(), {**spec.identity(), "content": "candidate"})
                deltas[n] = v
    oracle, shared = oracle.cpu(), shared.cpu()
    cos = {n: float(torch.nn.functional.cosine_similarity(deltas[n], oracle, dim=0)) for n in names}
    o_spec = remove_shared(oracle, shared)
    scos = {
        n: float(torch.nn.functional.cosine_similarity(remove_shared(deltas[n], shared), o_spec, dim=0, eps=1e-8))
        for n in names
    }
    return cos, scos, oracle, deltas


def task_results(
    ctx: Context,
    gens: dict[tuple[str, int], torch.nn.Module],
    probe: DeltaProbe,
    task: str,
    teachers: TeacherDataset,
    conditioner: Conditioner,
    shared: torch.Tensor,
    merged: LoraWeights | None = None,
    section: str = "heldout",
    baselines: Baselines | None = None,
) -> tuple[dict, torch.Tensor, dict[str, torch.Tensor], Candidates]:
    """One task of a report ``section`` (:func:`task_candidates`) generated, Δ-compared and scored: its entry of
    results.json (``kind``, ``n_items``, ``rows``), and the oracle Δ, every candidate's Δ and the candidates."""
    t0 = time.perf_counter()
    candidates = task_candidates(ctx, gens, task, teachers, conditioner, merged, section, baselines)
    ctx.stage("generate", t0)
    t0 = time.perf_counter()
    cos, scos, oracle, deltas = delta_cosines(ctx, probe, task, candidates, shared, teachers)
    ctx.stage("Δ of held-out arms" if section == "heldout" else "Δ of seen-task arms", t0)  # held-out: its old name
    scores = score(ctx, task, candidates)  # times its own eval calls, each as it ends
    rows: dict[str, dict] = {}
    for name, (row, _) in candidates.items():
        r = rows.setdefault(
            row,
            {
                "accuracies": [],
                "delta_cosines": [] if row != "base" else None,
                "delta_cosines_specific": [] if row != "base" else None,
                "arms": [],
                "item_scores": [],  # per candidate, its per-item scores: the report's paired bootstrap
            },
        )  # the row's candidates, under results.json's name for them
        r["accuracies"].append(scores[name]["accuracy"])
        r["item_scores"].append(scores[name]["scores"])
        r["arms"].append(name)
        if name in cos:  # every adapter; not base, not a routed candidate (Arrow has no single adapter to probe)
            r["delta_cosines"].append(cos[name])
            r["delta_cosines_specific"].append(scos[name])
    return {"kind": scores[BASE]["kind"], "n_items": scores[BASE]["n"], "rows": rows}, oracle, deltas, candidates


def run_experiment(
    cfg: RunConfig, out: str | Path, progress: bool = True, command: str | None = None, backbone=None
) -> Path:
    """Every stage of the held-out experiment into ``out``; returns the path of report.md."""
    t_all = time.perf_counter()
    ctx = prepare(cfg, out, progress, backbone)
    dirs = train_variants(ctx)
    gens = {key: load_generator(d / "generator.safetensors", ctx.backbone.device).gen for key, d in dirs.items()}
    probe = DeltaProbe(ctx.backbone, ctx.train_set.task_probes or cfg.train.probes, cfg.train.representation)
    results_tasks: dict[str, dict] = {}
    points, labels = [], []
    train_examples = [ctx.train_set.example(i, 0) for i in range(len(ctx.train_set))]
    for e, ex in zip(ctx.train_set.entries, train_examples):
        points.append(ex.delta.numpy())
        labels.append(f"teacher:{e.family}")
    shared = ctx.train_set.mean_delta()
    merged = average_merge([e.weights for e in train_examples]) if cfg.average_merge else None  # once, not per task
    base = prepare_baselines(ctx, train_examples)
    predicted: dict[str, dict[str, float]] = {"heldout": {}, "seen": {}}  # Δ predictor's cosine to each oracle
    for task in ctx.heldout:
        results_tasks[task], oracle, deltas, candidates = task_results(
            ctx, gens, probe, task, ctx.heldout_set, ctx.conditioner, shared, merged, baselines=base
        )
        if base.indexes:
            conds = task_conditions(ctx, ctx.conditioner, task, "heldout", cfg.adapters_per_seed)
            predicted["heldout"][task] = float(np.mean(baseline_predictor_cosines(base, conds, oracle)))
        points.append(oracle.numpy())
        labels.append(f"oracle:{task}")
        for name, d in deltas.items():
            row = candidates[name][0]
            if row in ("delta", "weight_only"):
                points.append(d.numpy())
                labels.append(f"{row}:{task}")
    seen_tasks = {}  # training tasks, adapters generated from the prompts held back from generator training
    seen_dw: dict[str, list[float]] = {}
    for task in ctx.seen:
        seen_tasks[task], oracle, _, candidates = task_results(
            ctx, gens, probe, task, ctx.train_set, ctx.seen_conditioner, shared, merged, "seen", base
        )
        if base.indexes:
            conds = task_conditions(ctx, ctx.seen_conditioner, task, "seen", cfg.adapters_per_seed)
            predicted["seen"][task] = float(np.mean(baseline_predictor_cosines(base, conds, oracle)))
        for row, values in dw_cosines(candidates, tuple(cfg.baselines.rows())).items():
            seen_dw.setdefault(row, []).append(float(np.mean(values)))
    fit = generator_fit(ctx, seen_dw)
    wall = time.perf_counter() - t_all
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    step_times = {variant: _median_step_seconds(ctx.out / "generators" / variant) for variant in cfg.variants}
    results = {
        "title": f"deltalora held-out experiment ({cfg.name})",
        "command": command or f"deltalora run --config <{cfg.name}.yaml> --out {ctx.out}",
        "backbone": ctx.backbone.name,
        "train_tasks": ctx.train_set.tasks,
        "heldout_tasks": ctx.heldout,
        "rows": rows(cfg),
        "row_labels": row_labels(cfg, ROW_LABELS),
        "baseline_rows": [r for r in rows(cfg) if r == "average_merge" or r in cfg.baselines.rows()],
        "generator_rows": list(cfg.variants),
        "baselines": {**base.report, **({"predictor_cosine": predicted} if base.indexes else {})},
        "tasks": results_tasks,
        "seen_tasks": seen_tasks,  # same shape as "tasks"
        "seen_row_labels": row_labels(cfg, SEEN_ROW_LABELS),
        "fit": fit,
        "timing": ctx.clock.call,
        "timing_all_calls": {"calls": ctx.clock.calls, "stages": ctx.clock.total},
        "notes": [
            f"{len(ctx.train_set)} training teachers ({len(ctx.train_set.excluded)} mixed teachers with a held-out "
            "component excluded), "
            f"{len(cfg.seeds)} generator seeds × {cfg.adapters_per_seed} generated adapters per held-out task and arm; "
            f"{cfg.eval.limit or 'all'} eval items per task.",
            _seen_note(ctx),
            f"Generator: {cfg.train.generator}, weight loss {cfg.train.weight_loss}, Δ loss {cfg.train.delta_loss} "
            "with λ → "
            f"{cfg.train.lam.target} (warm-up {cfg.train.lam.warmup_steps}, ramp {cfg.train.lam.ramp_steps}), probes "
            f"{cfg.train.probes}, "
            f"repr {cfg.train.representation}, {cfg.train.steps} steps.",
            f"Wall time of this call: {wall:.0f} s (stages resumed from an earlier call count only their remaining "
            "work).",
            "Median step time: "
            + ", ".join(f"{a} {s:.2f} s" for a, s in step_times.items() if s is not None)
            + f"; peak RSS {peak_gib:.2f} GiB.",
        ],
        "step_seconds": step_times,
        "peak_rss_gib": round(peak_gib, 2),
        "wall_seconds": round(wall, 1),
        "config": json.loads(cfg.model_dump_json()),
        "machine": ctx.machine,
    }
    logs = {
        f"{variant} seed {s}": ctx.out / "generators" / variant / f"seed{s}" / "log.jsonl"
        for variant in cfg.variants
        for s in cfg.seeds
    }
    tsne = {"points": np.stack(points), "labels": labels} if len(points) >= 4 else None
    path = write_report(ctx.out, results, logs=logs, tsne=tsne)
    _say(ctx, f"report: {path}")
    return path


def dw_cosines(candidates: Candidates, skip: tuple[str, ...] = ()) -> dict[str, list[float]]:
    """ΔW cosine of every generated candidate (and each oracle teacher) to the mean ΔW of the task's own teachers
    (the ``oracle`` row), by row: how close a generated adapter is to what the task's teachers learned. Rows in
    ``skip`` (the baselines) and the average merge are left out."""
    own = [w for row, w in candidates.values() if row == "oracle"]
    left_out = ("base", "average_merge", *skip)
    scored = [(row, w) for row, w in candidates.values() if isinstance(w, LoraWeights) and row not in left_out]
    out: dict[str, list[float]] = {}
    if own:
        for (row, _), cos in zip(scored, cosines_to_mean([w for _, w in scored], own)):
            out.setdefault(row, []).append(cos)
    return out


def generator_fit(ctx: Context, seen_dw: dict[str, list[float]]) -> dict[str, dict]:
    """Per variant: the L_weights floor (``fit.json``), the tail L_weights (mean of the last tenth of logged steps,
    mean over seeds) and the mean ΔW cosine to the own teachers' mean on seen tasks (``seen_dw``, by row)."""
    out = {}
    for variant in ctx.cfg.variants:
        floors, tails = [], []
        for seed in ctx.cfg.seeds:
            d = ctx.out / "generators" / variant / f"seed{seed}"
            if (d / FIT_NAME).is_file():
                floors.append(json.loads((d / FIT_NAME).read_text(encoding="utf-8"))["weight_loss_floor"])
            tail = tail_mean(read_log(d / "log.jsonl"), "loss_weights")
            if tail is not None:
                tails.append(tail)
        out[variant] = {
            "weight_loss": ctx.cfg.arm_config(variant, 0).weight_loss,
            "weight_loss_floor": float(np.mean(floors)) if floors else None,
            "tail_weight_loss": float(np.mean(tails)) if tails else None,
            "seen_dw_cosine": float(np.mean(seen_dw[variant])) if seen_dw.get(variant) else None,
        }
    if seen_dw.get("oracle"):
        out["oracle"] = {"seen_dw_cosine": float(np.mean(seen_dw["oracle"]))}  # own teachers to their mean: the ceiling
    return out


def _seen_note(ctx: Context) -> str:
    s = ctx.cfg.seen
    if not s.tasks:
        return "Seen tasks: off (seen.tasks = 0); the generators trained on whole condition pools."
    return (
        f"Seen tasks: {len(ctx.seen)} of {len(ctx.train_set.tasks)} training tasks (asked for {s.tasks}, stratified "
        f"by family, seed {s.seed}); {s.fraction:g} of every training task's condition pool was held back from "
        "generator training, and their adapters are generated from those prompts only."
    )


def _median_step_seconds(variant_dir: Path) -> float | None:
    """Median step time over a variant's logs, counting only steps that ran the Δ forward when any did."""
    recs = [r for log in sorted(variant_dir.glob("seed*/log.jsonl")) for r in read_log(log).values()]
    with_delta = [r["step_seconds"] for r in recs if r.get("loss_delta") is not None]
    times = with_delta or [r["step_seconds"] for r in recs]
    return float(np.median(times)) if times else None


__all__ = [
    "CANDIDATES_PER_EVAL_CALL",
    "ROWS",
    "ROW_LABELS",
    "SEEN_ROW_LABELS",
    "VARIANTS",
    "Context",
    "delta_cosines",
    "own_teachers",
    "prepare",
    "run_experiment",
    "score",
    "task_candidates",
    "task_results",
    "train_variants",
]
