"""``deltalora compose``: compositionality — do mixed-task teachers' Δ add up, and do adapters for two tasks interfere?

    zoo with mixed pairs (build/reuse) ─► teacher Δ ─► Δ algebra per pair and probe set (Δ_mix vs Δ₁ + Δ₂, …)
        └─► generator and Δ predictor on the single-task teachers (no mixed teacher) × seeds
            ─► per pair, on both component tasks: base, the component's own teachers, the mixed teacher, merges of
               the two components' teachers, the generator's adapter from a condition of both tasks' prompts,
               Δ-retrieval queried with Δ̂₁ + Δ̂₂ ─► eval ─► interference ─► compositionality.md

A *pair* is a mixed task of the zoo (``"a+b"``, a LoRA trained on the union of both tasks' train splits). Teachers
are taken at each zoo seed's last checkpoint: the mixed teacher of seed s, the components' teachers of seed s, and
their merges (one merge per seed), so every teacher row has one value per zoo seed; the generated and retrieved
adapters have one per generator seed. *Interference* on a component task is a row's accuracy minus that
component's own teachers' accuracy (negative: the composed adapter lost some of the task). The seed criterion "mixed
adapters do not catastrophically interfere compared to naive merges" is checked per pair for the mixed teacher and
the generated adapter: pass when their mean interference over the two tasks is no worse than the naive (first)
merge's. A row keeps too little (``catastrophic``) on a task when it retains less than ``cfg.retained`` of the own
teachers' gain over base.

Everything lands in the output directory and is reused by a rerun: ``deltas/`` (Δ cache), ``algebra/<probes>.json``
(keyed by the pair teachers' content, the probes and the backbone), ``generators/seed<N>/``, ``retrieval/``,
``eval/<task>/<key>.json`` (scores keyed by adapter content: a merge or a generated adapter is scored once),
``results.json``, ``compositionality.md`` and ``figures/compose_*.png`` (named so that the report and its figures
copy into ``results/`` as they are).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..deltas import (
    DeltaProbe,
    TaskProbes,
    compute_deltas,
    resolve_probes,
    sources_from_manifest,
)
from ..deltas.algebra import algebra_figure, single_task_mean, summarize_pairs, zoo_algebra
from ..errors import ConfigError
from ..eval.runner import BASE
from ..generators.checkpoint import load_generator
from ..lora import LoraWeights
from ..paths import atomic_write_bytes
from ..training import TeacherDataset, train_generator
from ..zoo.manifest import ZooEntry, last_teachers
from .baselines import cached_index
from .candidates import Candidates, generate
from .compose_report import write_compose_report
from .config import ComposeConfig
from .run import _say, score
from .world import World, prepare_world


@dataclass
class ComposeContext(World):
    """A compositionality study's world, with the pairs it studies and the single-task teachers the generator and the
    Δ predictor learn from."""

    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)  # mixed task -> its two component tasks
    train_set: TeacherDataset | None = None


def mixed_pairs(entries: list[ZooEntry], wanted: list[str], zoo_dir: Path) -> dict[str, tuple[str, str]]:
    """The zoo's two-task mixed pairs (``wanted`` of them, or all), each with single-task teachers of both tasks."""
    found = {e.task: tuple(e.tasks) for e in entries if e.mixed and len(e.tasks) == 2}
    if not found:
        raise ConfigError(
            f"{zoo_dir}: no two-task mixed teacher in this zoo; add pairs under `mixed:` in the zoo YAML and build it"
        )
    unknown = [p for p in wanted if p not in found]
    if unknown:
        raise ConfigError(f"pairs {unknown} are not mixed tasks of {zoo_dir}; use some of {sorted(found)}")
    pairs = {p: found[p] for p in (wanted or sorted(found))}
    singles = {e.task for e in entries if not e.mixed}
    lacking = sorted({t for ts in pairs.values() for t in ts} - singles)
    if lacking:
        raise ConfigError(f"{zoo_dir}: no single-task teacher of component task(s) {lacking}; build the zoo with them")
    return pairs


def prepare_compose(cfg: ComposeConfig, out: str | Path, progress: bool = True, backbone=None) -> ComposeContext:
    """Backbone, zoo, teacher Δ on the generator's probes, conditions and the single-task training set."""
    found: dict = {}

    def check(entries, zoo_dir, zoo_cfg):
        found.update(mixed_pairs(entries, cfg.pairs, zoo_dir))

    ctx = prepare_world(cfg, out, progress, backbone, check=check, kind=ComposeContext)
    ctx.pairs = found
    t0 = time.perf_counter()
    ctx.train_set = ctx.teachers(mixed=False)
    ctx.stage("conditions", t0)
    return ctx


# ------------------------------------------------------------------------------------------------ the Δ algebra


def _pair_entries(ctx: ComposeContext, pair: str) -> list[ZooEntry]:
    """The pair's mixed teachers and its components' teachers, each zoo seed's last checkpoint."""
    return [e for task in (pair, *ctx.pairs[pair]) for e in last_teachers(ctx.entries, task).values()]


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@torch.no_grad()
def _union_deltas(ctx: ComposeContext, probe: DeltaProbe, pair: str) -> dict[str, torch.Tensor]:
    """Δ of the pair's mixed teachers and its components' teachers, all on the union of both tasks' probes."""
    group = ctx.pairs[pair]
    entries = _pair_entries(ctx, pair)
    out: dict[str, torch.Tensor] = {}
    k = ctx.cfg.delta_batch_adapters
    for i in range(0, len(entries), k):
        chunk = entries[i : i + k]
        d = probe(LoraWeights.stack([ctx.adapter(e) for e in chunk]), [group] * len(chunk)).cpu()
        out.update({e.id: row for e, row in zip(chunk, d)})
    return out


def algebra(ctx: ComposeContext) -> dict[str, dict]:
    """Per probe set of ``cfg.algebra_probes``: the Δ algebra of every pair's mixed teacher at each zoo seed's last
    checkpoint (:func:`~deltalora.deltas.algebra.zoo_algebra`) and its summary over seeds, cached in
    ``algebra/<probes>.json``.

    A fixed probe set (generic5, a file) probes every teacher on the same prompts, and the single-task teachers' mean
    Δ gives the ``specific`` numbers; task probes (``task:train:N``) probe a pair's mixed teacher and both
    components' teachers on the union of the two tasks' prompts (the same prompts for all three), with no shared
    direction removed (the single-task mean would have to be recomputed on every pair's prompts)."""
    rep = ctx.cfg.train.representation
    used = [e for p in ctx.pairs for e in _pair_entries(ctx, p)]
    mixed_ids = {e.id for e in used if e.mixed}
    out = {}
    for name in ctx.cfg.algebra_probes:
        probes = resolve_probes(name, ctx.tasks, ctx.backbone.tokenizer)
        fp = _fingerprint(
            sorted((e.id, e.sha256) for e in (ctx.entries if not isinstance(probes, TaskProbes) else used)),
            name,
            rep,
            ctx.backbone.weights_id,
            sorted(ctx.pairs),
        )
        path = ctx.out / "algebra" / f"{_slug(name)}.json"
        if path.is_file():
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("fingerprint") == fp:
                out[name] = cached
                continue
        t0 = time.perf_counter()
        _say(ctx, f"[algebra] Δ of {len(ctx.pairs)} pairs on {name}")
        if isinstance(probes, TaskProbes):
            probe = DeltaProbe(ctx.backbone, probes, rep)
            records = []
            for pair in ctx.pairs:
                records += zoo_algebra(_pair_entries(ctx, pair), _union_deltas(ctx, probe, pair))
        else:
            report = compute_deltas(
                ctx.backbone,
                sources_from_manifest(ctx.zoo_dir),
                probes,
                rep,
                ctx.cache,
                batch_adapters=ctx.cfg.delta_batch_adapters,
                progress=ctx.progress,
            )
            ids, matrix = report.load(ctx.cache)
            deltas = dict(zip(ids, matrix))
            shared = single_task_mean(ctx.entries, deltas)
            records = [r for r in zoo_algebra(ctx.entries, deltas, shared) if r["id"] in mixed_ids]
        result = {"fingerprint": fp, "probes": name, "representation": rep, "records": records}
        result["summary"] = summarize_pairs(records)
        atomic_write_bytes(path, json.dumps(result, indent=1).encode())
        out[name] = result
        ctx.stage("Δ algebra", t0)
    return out


# ------------------------------------------------------------------------------------------------ composed adapters


def train_generators(ctx: ComposeContext) -> dict[int, torch.nn.Module]:
    """The generator of every seed, trained on the single-task teachers (resumed or reused when already there)."""
    gens = {}
    for seed in ctx.cfg.seeds:
        d = ctx.out / "generators" / f"seed{seed}"
        _say(ctx, f"[train] generator seed {seed} -> {d}")
        t0 = time.perf_counter()
        res = train_generator(
            ctx.cfg.train.model_copy(update={"seed": seed}),
            ctx.train_set,
            ctx.backbone,
            d,
            progress=ctx.progress,
            meta={"encoder": ctx.cfg.train.encoder, "heldout_tasks": [], "mixed_teachers": "excluded"},
            tasks=ctx.tasks,
        )
        ctx.stage("train generator", t0)
        gens[seed] = load_generator(res.generator, ctx.backbone.device).gen
    return gens


def merge_row(method: str) -> str:
    return f"merge_{method}"


def rows(cfg: ComposeConfig) -> list[str]:
    """The study's rows, in report order."""
    out = ["base", "own", "mixed", *(merge_row(m) for m in cfg.merges), "generated"]
    return out + (["retrieval_sum"] if cfg.retrieval else [])


def row_labels(cfg: ComposeConfig) -> dict[str, str]:
    labels = {
        "base": "base model",
        "own": "the component's own teacher",
        "mixed": "mixed teacher (trained on both tasks)",
        "generated": "generator, condition from both tasks' prompts",
    }
    labels.update({merge_row(m): f"{m} merge of the two components' teachers" for m in cfg.merges})
    if cfg.retrieval:
        r = cfg.retrieval
        labels["retrieval_sum"] = f"Δ-retrieval by Δ̂₁ + Δ̂₂, top {r.k} + {r.merge} merge"
    return {r: labels[r] for r in rows(cfg)}


def pair_conditions(ctx: ComposeContext, pair: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The seed's condition for the pair (prompts drawn from both tasks' pools) and one for each component."""
    t1, t2 = ctx.pairs[pair]
    c = ctx.conditioner
    return (
        c.sample((t1, t2), seed=seed, epoch=0, key="compose/mixed"),
        c.sample(t1, seed=seed, epoch=0, key="compose/component"),
        c.sample(t2, seed=seed, epoch=0, key="compose/component"),
    )


def pair_candidates(ctx: ComposeContext, pair: str, gens: dict, indexes: dict) -> Candidates:
    """Every composed adapter of one pair (the same on both component tasks): per zoo seed the mixed teacher and the
    merges of the components' teachers; per generator seed the generated and the retrieved adapter."""
    t1, t2 = ctx.pairs[pair]
    out: Candidates = {}
    mixed = last_teachers(ctx.entries, pair)
    first, second = last_teachers(ctx.entries, t1), last_teachers(ctx.entries, t2)
    for seed, e in mixed.items():
        out[f"mixed/s{seed}"] = ("mixed", ctx.adapter(e))
    for seed in sorted(set(first) & set(second)):
        adapters = [ctx.adapter(first[seed]), ctx.adapter(second[seed])]
        for m in ctx.cfg.merges:
            w = ctx.merges.merge(adapters, method=m, names=[first[seed].id, second[seed].id], seed=seed)
            out[f"{merge_row(m)}/s{seed}"] = (merge_row(m), w)
    r = ctx.cfg.retrieval
    position = {e.id: i for i, e in enumerate(ctx.train_set.entries)}  # the index's teachers, held by the train set
    for seed, gen in gens.items():
        cond, c1, c2 = pair_conditions(ctx, pair, seed)
        out[f"generated/s{seed}"] = ("generated", generate(gen, cond[None])[0])
        if r is not None:
            index = indexes[seed]
            hits = index.retrieve_delta(index.predict(c1) + index.predict(c2), k=r.k, temperature=r.temperature)
            w = ctx.merges.merge(
                [ctx.train_set.adapter(position[h.id]) for h in hits],
                [h.weight for h in hits],
                r.merge,
                names=[h.id for h in hits],
                seed=seed,
            )
            out[f"retrieval_sum/s{seed}"] = ("retrieval_sum", w)
    return out


def _stats(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def interference(task_rows: dict[str, dict], cfg: ComposeConfig) -> dict:
    """Per row of one pair: on each component task the accuracy's mean ± std over the row's adapters, the drop
    against the own teachers (row − own, per adapter) and the share of the own teachers' gain over base it keeps;
    over both tasks the mean drop, ``catastrophic`` (keeps < ``cfg.retained`` of the gain on a task) and, for the
    mixed teacher and the generated adapter, the seed criterion against the naive (first) merge."""
    naive = merge_row(cfg.merges[0])
    out: dict[str, dict] = {}
    for row in rows(cfg):
        if row in ("base", "own"):
            continue
        per_task = {}
        for task, res in task_rows.items():
            r = res["rows"]
            if row not in r:
                continue
            own = statistics.fmean(r["own"]["accuracies"])
            base = statistics.fmean(r["base"]["accuracies"])
            accs = r[row]["accuracies"]
            gain = own - base
            per_task[task] = {
                "accuracy": _stats(accs),
                "drop": _stats([a - own for a in accs]),
                "retained": (statistics.fmean(accs) - base) / gain if gain > 0 else None,
            }
        if not per_task:
            continue
        kept = [t["retained"] for t in per_task.values() if t["retained"] is not None]
        out[row] = {
            "tasks": per_task,
            "mean_drop": statistics.fmean(t["drop"]["mean"] for t in per_task.values()),
            "catastrophic": any(k < cfg.retained for k in kept) if kept else None,
        }
    for row in ("mixed", "generated"):
        if row in out and naive in out:
            out[row]["vs_naive_merge"] = {
                "merge": naive,
                "pass": out[row]["mean_drop"] >= out[naive]["mean_drop"],
                "row_mean_drop": out[row]["mean_drop"],
                "merge_mean_drop": out[naive]["mean_drop"],
            }
    return out


def run_compose(
    cfg: ComposeConfig, out: str | Path, progress: bool = True, command: str | None = None, backbone=None
) -> Path:
    """Every stage of the compositionality study into ``out``; returns the path of compositionality.md."""
    t_all = time.perf_counter()
    ctx = prepare_compose(cfg, out, progress, backbone)
    alg = algebra(ctx)
    gens = train_generators(ctx)
    indexes = {}
    if cfg.retrieval:
        t0 = time.perf_counter()
        for seed in cfg.seeds:
            indexes[seed] = cached_index(
                ctx.out / "retrieval" / f"index-s{seed}.safetensors",
                ctx.train_set,
                cfg.retrieval.predictor,
                seed,
                encoder=cfg.train.encoder,
                form=ctx.conditioner.form,
                probes=[cfg.train.probes, cfg.train.representation],
            )
        ctx.stage("Δ predictor", t0)
    families = {e.task: e.family for e in ctx.entries if not e.mixed}
    pairs = {}
    for pair, (t1, t2) in ctx.pairs.items():
        t0 = time.perf_counter()
        composed = pair_candidates(ctx, pair, gens, indexes)
        ctx.stage("compose adapters", t0)
        task_rows = {}
        for task in (t1, t2):
            candidates: Candidates = {BASE: ("base", None)}
            for seed, e in last_teachers(ctx.entries, task).items():
                candidates[f"own/s{seed}"] = ("own", ctx.adapter(e))
            candidates.update(composed)
            scores = score(ctx, task, candidates)
            grouped: dict[str, dict] = {}
            for name, (row, _) in candidates.items():
                g = grouped.setdefault(row, {"arms": [], "accuracies": []})
                g["arms"].append(name)
                g["accuracies"].append(scores[name]["accuracy"])
            task_rows[task] = {"kind": scores[BASE]["kind"], "n_items": scores[BASE]["n"], "rows": grouped}
        pairs[pair] = {
            "tasks": [t1, t2],
            "families": [families.get(t1), families.get(t2)],
            "cross_family": families.get(t1) != families.get(t2),
            "eval": task_rows,
            "interference": interference(task_rows, cfg),
        }
    results = {
        "title": f"deltalora compositionality study ({cfg.name})",
        "command": command or f"deltalora compose --config <{cfg.name}.yaml> --out {ctx.out}",
        "backbone": ctx.backbone.name,
        "zoo": _relative(ctx.zoo_dir),
        "train_teachers": len(ctx.train_set),
        "mixed_excluded": len(ctx.train_set.excluded),
        "rows": rows(cfg),
        "row_labels": row_labels(cfg),
        "algebra": {name: {k: v for k, v in a.items() if k != "fingerprint"} for name, a in alg.items()},
        "pairs": pairs,
        "timing": ctx.clock.call,
        "wall_seconds": round(time.perf_counter() - t_all, 1),
        "config": json.loads(cfg.model_dump_json()),
        "machine": ctx.machine,
    }
    figures = {
        name: algebra_figure(a["records"], ctx.out / "figures" / f"compose_algebra_{_slug(name)}.png")
        for name, a in alg.items()
    }
    path = write_compose_report(ctx.out, results, figures)
    _say(ctx, f"report: {path}")
    return path


def _relative(path: Path) -> str:
    """``path`` relative to the working directory when it is under it (reports name no machine's absolute paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _slug(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


__all__ = [
    "ComposeContext",
    "algebra",
    "interference",
    "mixed_pairs",
    "pair_candidates",
    "prepare_compose",
    "row_labels",
    "rows",
    "run_compose",
    "train_generators",
]
