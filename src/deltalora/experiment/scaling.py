"""``deltalora scale``: held-out gain against the number of training tasks, every task held out once (k folds).

    zoo ─► teacher Δ ─► folds of tasks (stratified by family) ─► per fold and draw: a seeded order of the other
    tasks (the pool); per size n its first n tasks (nested sets) ─► a generator, the mean merge and Δ-retrieval on
    those tasks' teachers ─► adapters for every task of the fold ─► eval ─► gain over base and % of the own
    teachers' gain, per row and size, over all folds ─► scaling.md (curve with error bars)

Every number is a held-out number: a fold's tasks never reach the generator, the merge or the retrieval index of
that fold. The base model and each task's own teachers (each zoo seed's last checkpoint) are scored once per task.
Error bars: the standard error over tasks (each task's gain averaged over draws and adapters first); the spread
between draws is reported beside it. Whether more tasks help the generator more than the baselines is the paired
difference, over tasks, of (gain at the largest size − gain at the smallest) between the generator and each
baseline.

Resumable: generators resume, retrieval indexes and every score are cached by content under ``out``; ``run_folds``
splits the folds over several calls (the report covers every fold whose scores are all there).
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..backbones import decide_precision
from ..errors import ConfigError
from ..eval.runner import BASE
from ..paths import atomic_write_bytes
from ..retrieval import retrieve_adapter
from ..tasks import stable_seed
from ..training import train_generator
from ..zoo import ZooConfig
from ..zoo.build import holdout_groups
from ..zoo.manifest import ZooEntry, last_teachers
from .baselines import cached_index
from .candidates import Candidates, average_merge, generate
from .config import ScalingConfig
from .run import _say, score
from .scaling_report import ALL, size_order, write_scaling_report
from .world import World, prepare_world

ROWS = ("generator", "average_merge", "retrieval")  # the curve's rows, in report order


def make_folds(
    families: Mapping[str, str], k: int, seed: int, groups: Mapping[str, str] | None = None
) -> list[list[str]]:
    """``k`` folds of the tasks of ``families`` (task -> family), stratified: each family's tasks, in a seeded order,
    are dealt round-robin, continuing from where the previous family stopped, so fold sizes differ by at most one
    and every family is spread over the folds.

    ``groups`` (task -> group; a task not in it is a group of its own) keeps siblings together: a group is dealt as
    one unit (where its alphabetically first member comes in that member's family's order) to the fold with the
    fewest tasks of that family, then the fewest tasks, from the dealing position on, so no held-out task has a
    sibling in training. Without groups of more than one task this is exactly the round-robin above."""
    group_of = {t: (groups or {}).get(t) or t for t in families}
    units: dict[str, list[str]] = defaultdict(list)
    for t in sorted(families):
        units[group_of[t]].append(t)
    if len(units) < k:
        what = f"{len(families)} tasks" + (f" in {len(units)} groups" if len(units) < len(families) else "")
        raise ConfigError(f"{what} cannot fill {k} folds; use fewer folds or a larger zoo")
    folds: list[list[str]] = [[] for _ in range(k)]
    i = 0
    for fam in sorted(set(families.values())):
        tasks = sorted(t for t, f in families.items() if f == fam)
        random.Random(stable_seed("folds", seed, fam)).shuffle(tasks)
        in_family = [0] * k
        for t in tasks:
            if units[group_of[t]][0] != t:
                continue  # a sibling: dealt with its group's first member
            # the fold with the fewest of this family, then the fewest tasks; ties: the first from the dealing position
            fold = min(((i + j) % k for j in range(k)), key=lambda f: (in_family[f], len(folds[f])))
            folds[fold].extend(units[group_of[t]])
            in_family[fold] += len(units[group_of[t]])
            i = fold + 1
    return [sorted(f) for f in folds]


def pool_order(pool: Sequence[str], fold: int, draw: int, seed: int) -> list[str]:
    """A seeded random order of a fold's pool; its first n tasks are the size-n training set (nested in n)."""
    order = sorted(pool)
    random.Random(stable_seed("scaling-order", seed, fold, draw)).shuffle(order)
    return order


def sizes_for(cfg: ScalingConfig, pool: int) -> list[int]:
    """The training-set sizes of a fold: ``cfg.sizes`` below the pool's size, and the whole pool."""
    return sorted({n for n in cfg.sizes if n < pool} | {pool})


def fold_records(world: World, fold: int, tasks: list[str], pool: list[str]) -> list[dict]:
    """Train, build and score everything of one fold; one record per scored candidate."""
    cfg: ScalingConfig = world.cfg
    records = []
    for task in tasks:  # base and the own teachers: once per task
        cands: Candidates = {BASE: ("base", None)}
        for seed, e in last_teachers(world.entries, task).items():
            cands[f"own/s{seed}"] = ("own", world.adapter(e))
        for name, r in score(world, task, cands).items():
            records.append({"fold": fold, "task": task, "row": cands[name][0], "arm": name, "accuracy": r["accuracy"]})
    singles = sorted({e.task for e in world.entries if not e.mixed})
    for draw in range(cfg.draws):
        order = pool_order(pool, fold, draw, cfg.fold_seed)
        for n in sizes_for(cfg, len(pool)):
            chosen = order[:n]
            where = f"f{fold}/d{draw}/n{n}"
            _say(world, f"[scale] fold {fold} draw {draw}: {n} training tasks")
            t0 = time.perf_counter()
            train_set = world.teachers(exclude=[t for t in singles if t not in chosen], mixed=False)
            res = train_generator(
                cfg.train.model_copy(update={"seed": draw}),
                train_set,
                world.backbone,
                world.out / "generators" / where,
                progress=world.progress,
                meta={"encoder": cfg.train.encoder, "heldout_tasks": tasks, "train_tasks": chosen},
                tasks=world.tasks,
            )
            world.stage("train generator", t0)
            t0 = time.perf_counter()
            weights = {e.id: train_set.adapter(i) for i, e in enumerate(train_set.entries)}
            merged = average_merge(list(weights.values()))
            index = cached_index(
                world.out / "retrieval" / f"index-f{fold}-d{draw}-n{n}.safetensors",
                train_set,
                cfg.predictor,
                draw,
                encoder=cfg.train.encoder,
                form=world.conditioner.form,
                probes=[cfg.train.probes, cfg.train.representation],
            )
            world.stage("baselines", t0)
            gen = res.module.eval()
            for task in tasks:
                conds = torch.stack(
                    [
                        world.conditioner.sample(task, seed=draw, epoch=0, key=f"scale/{j}")
                        for j in range(cfg.adapters_per_task)
                    ]
                )
                cands: Candidates = {"average_merge": ("average_merge", merged)}
                for j, w in enumerate(generate(gen, conds)):
                    cands[f"generator/g{j}"] = ("generator", w)
                for j, cond in enumerate(conds):
                    w, _ = retrieve_adapter(
                        index,
                        cond,
                        by=cfg.retrieval.by,
                        k=min(cfg.k, len(index)),
                        temperature=cfg.temperature,
                        merge=cfg.retrieval.merge,
                        teachers=lambda hits, w=weights: [w[h.id] for h in hits],
                        merger=world.merges.merge,
                        seed=draw,
                    )
                    cands[f"retrieval/g{j}"] = ("retrieval", w)
                for name, r in score(world, task, cands).items():
                    records.append(
                        {
                            "fold": fold,
                            "draw": draw,
                            "size": n,
                            "whole_pool": n == len(pool),
                            "task": task,
                            "row": cands[name][0],
                            "arm": name,
                            "accuracy": r["accuracy"],
                        }
                    )
            del train_set, weights, merged, index, gen, res  # a pool's teachers are GBs: free them per size
    return records


def _se(values: Sequence[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def summarize_scaling(
    records: Sequence[Mapping],
    min_own_gain: float = 0.05,
    families: Mapping[str, str] | None = None,
    groups: Mapping[str, str] | None = None,
) -> dict:
    """The curve from the records: per row and size, the mean gain over base across tasks (each task's gain averaged
    over draws and adapters first) with its standard error over tasks, the spread of the across-task mean between
    draws, and the mean share of the own teachers' gain (tasks whose own teachers gain ≥ ``min_own_gain``); and,
    per baseline, the paired difference over tasks of the generator's (largest − smallest size) gain change and the
    baseline's. Records of a fold's whole pool (``whole_pool``) form the point ``ALL``, whatever the pool's size (folds
    of unequal size have pools one task apart). With ``families`` (task -> family): per family, the gain of the own
    teachers and of every row at the generator's largest size (``by_family``). With records of several folds: per
    fold, every row's gain at its largest size and the generator-minus-baseline changes (``by_fold``), so a reader sees
    whether the pooled verdict holds fold by fold. Each slope also carries the generator-minus-baseline gap at the
    largest size (``at_largest``); with ``groups`` (task -> hold-out group) that join tasks, both are also counted
    with a group of siblings as one unit (``grouped``)."""
    base = {r["task"]: r["accuracy"] for r in records if r["row"] == "base"}
    own_acc: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r["row"] == "own":
            own_acc[r["task"]].append(r["accuracy"])
    own_gain = {t: statistics.fmean(v) - base[t] for t, v in own_acc.items() if t in base}
    cells: dict[tuple[str, int | str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    sizes: dict[str, set[int | str]] = defaultdict(set)
    pools: set[int] = set()  # the whole pools' sizes
    for r in records:
        if r["row"] in ROWS and r["task"] in base:
            n = ALL if r.get("whole_pool") else r["size"]  # every fold's whole pool is one point of the curve
            cells[(r["row"], n, r["task"])][r["draw"]].append(r["accuracy"] - base[r["task"]])
            sizes[r["row"]].add(n)
            if n == ALL:
                pools.add(r["size"])
    curve: dict[str, dict[int | str, dict]] = {}
    per_task: dict[tuple[str, int | str], dict[str, float]] = {}
    for row in ROWS:
        curve[row] = {}
        for n in sorted(sizes[row], key=size_order):
            tasks = sorted({t for (r_, n_, t) in cells if r_ == row and n_ == n})
            gains = {t: statistics.fmean(x for d in cells[(row, n, t)].values() for x in d) for t in tasks}
            per_task[(row, n)] = gains
            draws = sorted({d for t in tasks for d in cells[(row, n, t)]})
            by_draw = [
                statistics.fmean(statistics.fmean(cells[(row, n, t)][d]) for t in tasks if d in cells[(row, n, t)])
                for d in draws
            ]
            pct = [gains[t] / own_gain[t] for t in tasks if own_gain.get(t, 0) >= min_own_gain]
            curve[row][n] = {
                "gain": statistics.fmean(gains.values()),
                "gain_se": _se(list(gains.values())),
                "draw_std": statistics.stdev(by_draw) if len(by_draw) > 1 else 0.0,
                "share_of_own_gain": statistics.fmean(pct) if pct else None,
                "share_se": _se(pct) if pct else None,
                "n_tasks": len(tasks),
                "n_tasks_share": len(pct),
                "draws": len(draws),
            }
    slopes: dict[str, dict] = {}
    by_family: dict[str, dict] = {}
    gen_sizes = sorted(curve["generator"], key=size_order)
    if gen_sizes and families:
        top = gen_sizes[-1]
        scored = per_task[("generator", top)]
        for fam in sorted({families[t] for t in scored if t in families}):
            members = [t for t in scored if families.get(t) == fam]
            entry: dict = {"size": top, "n_tasks": len(members)}
            for row, gains in [("own", own_gain)] + [(r, per_task.get((r, top), {})) for r in ROWS]:
                vals = [gains[t] for t in members if t in gains]
                entry[row] = {"gain": statistics.fmean(vals), "gain_se": _se(vals)} if vals else None
            by_family[fam] = entry
    if len(gen_sizes) >= 2:
        lo, hi = gen_sizes[0], gen_sizes[-1]

        def change(row: str) -> dict[str, float]:
            a, b = per_task.get((row, lo), {}), per_task.get((row, hi), {})
            return {t: b[t] - a[t] for t in a if t in b}

        g = change("generator")
        top_gen = per_task.get(("generator", hi), {})
        for row in ROWS[1:]:
            c = change(row)
            diffs = {t: g[t] - c[t] for t in g if t in c}
            if len(diffs) >= 2:
                slopes[row] = {
                    "from": lo,
                    "to": hi,
                    "generator_change": statistics.fmean(g[t] for t in diffs),
                    "baseline_change": statistics.fmean(c[t] for t in diffs),
                    **_paired(diffs, groups),
                }
                top = per_task.get((row, hi), {})
                level = {t: top_gen[t] - top[t] for t in top_gen if t in top}
                if len(level) >= 2:
                    slopes[row]["at_largest"] = _paired(level, groups)  # the gap itself, not its change
    return {
        "curve": curve,
        "slopes": slopes,
        "tasks": len(base),
        "pool_sizes": sorted(pools),  # the training-set sizes the ALL point stands for
        "own_gain_median": statistics.median(own_gain.values()) if own_gain else None,
        "by_family": by_family,
        "by_fold": _by_fold(records, min_own_gain),
    }


def _paired(diffs: Mapping[str, float], groups: Mapping[str, str] | None) -> dict:
    """A paired difference over tasks: mean, standard error, whether beyond 2 SE; and where ``groups`` join tasks,
    the same with each group of siblings as one unit (``grouped``: the mean of its members' differences), since
    siblings held out together are not independent tasks."""
    vals = list(diffs.values())
    m, se = statistics.fmean(vals), _se(vals)
    out: dict = {"difference": m, "se": se, "n_tasks": len(vals), "beyond_2se": abs(m) > 2 * se}
    units: dict[str, list[float]] = defaultdict(list)
    for t, v in diffs.items():
        units[(groups or {}).get(t) or t].append(v)
    if 2 <= len(units) < len(vals):
        per_unit = [statistics.fmean(v) for v in units.values()]
        m, se = statistics.fmean(per_unit), _se(per_unit)
        out["grouped"] = {"difference": m, "se": se, "n_units": len(units), "beyond_2se": abs(m) > 2 * se}
    return out


def _by_fold(records: Sequence[Mapping], min_own_gain: float) -> dict[str, dict]:
    """Per fold (string keys, as in results.json): its held-out tasks, each row's gain ± SE at the row's largest
    size, and the generator-minus-baseline changes; empty for records of one fold."""
    folds = sorted({r["fold"] for r in records if r.get("fold") is not None})
    out: dict[str, dict] = {}
    if len(folds) < 2:
        return out
    for fold in folds:
        s = summarize_scaling([r for r in records if r.get("fold") == fold], min_own_gain)
        top = {}
        for row, pts in s["curve"].items():
            if pts:
                n = max(pts, key=size_order)
                top[row] = {"size": n, "gain": pts[n]["gain"], "gain_se": pts[n]["gain_se"]}
        slopes = {row: {k: d[k] for k in ("from", "to", "difference", "se")} for row, d in s["slopes"].items()}
        out[str(fold)] = {"n_tasks": s["tasks"], "top": top, "slopes": slopes}
    return out


def run_scaling(
    cfg: ScalingConfig, out: str | Path, progress: bool = True, command: str | None = None, backbone=None
) -> Path:
    """Every fold of ``cfg.run_folds`` (all by default) into ``out``; the report over every finished fold. Returns the
    path of scaling.md."""
    t_all = time.perf_counter()
    folds: list[list[str]] = []
    families: dict[str, str] = {}
    groups: dict[str, str] = {}  # task -> its hold-out group, for the tasks whose group joins siblings

    def check(entries: list[ZooEntry], zoo_dir: Path, zoo_cfg: ZooConfig) -> None:
        families.update({e.task: e.family for e in entries if not e.mixed})
        held = holdout_groups(zoo_cfg)
        folds.extend(make_folds(families, cfg.folds, cfg.fold_seed, held))  # siblings together
        group_of = {t: held.get(t) or t for t in families}
        size = Counter(group_of.values())
        groups.update({t: g for t, g in group_of.items() if size[g] > 1})
        smallest = min(len(families) - len(f) for f in folds)
        if smallest < 1:
            raise ConfigError(f"{zoo_dir}: a fold leaves no training task; use more tasks or fewer folds")

    world = prepare_world(cfg, out, progress, backbone, check=check)
    done_path = world.out / "folds"
    all_tasks = sorted(t for f in folds for t in f)
    for fold in cfg.run_folds if cfg.run_folds is not None else range(cfg.folds):
        path = done_path / f"fold{fold}.json"
        if path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("tasks") == folds[fold]:
            continue
        pool = [t for t in all_tasks if t not in folds[fold]]
        records = fold_records(world, fold, folds[fold], pool)
        # the evaluator's precision as decided on this machine (eval.precision auto: bf16 here, float32 elsewhere)
        scored = decide_precision(cfg.eval.precision, world.backbone.device).name
        saved = {"tasks": folds[fold], "pool": pool, "eval_precision": scored, "records": records}
        atomic_write_bytes(path, json.dumps(saved).encode())
    records, finished, precision = [], [], {}
    for fold in range(cfg.folds):
        path = done_path / f"fold{fold}.json"
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("tasks") == folds[fold]:
                records += saved["records"]
                finished.append(fold)
                precision[fold] = saved.get("eval_precision", "float32")  # folds saved before it was recorded
    results = {
        "title": f"deltalora task-scaling study ({cfg.name})",
        "command": command or f"deltalora scale --config <{cfg.name}.yaml> --out {world.out}",
        "backbone": world.backbone.name,
        "folds": folds,
        "families": families,
        "groups": groups,
        "finished_folds": finished,
        "eval_precision": precision,
        "summary": summarize_scaling(records, cfg.min_own_gain, families, groups),
        "records": records,
        "timing": world.clock.call,
        "timing_all_calls": {"calls": world.clock.calls, "stages": world.clock.total},  # a study is many calls
        "wall_seconds": round(time.perf_counter() - t_all, 1),
        "config": json.loads(cfg.model_dump_json()),
        "machine": world.machine,
    }
    path = write_scaling_report(world.out, results)
    _say(world, f"report: {path}")
    return path


__all__ = [
    "ALL",
    "ROWS",
    "size_order",
    "fold_records",
    "make_folds",
    "pool_order",
    "run_scaling",
    "sizes_for",
    "summarize_scaling",
]
