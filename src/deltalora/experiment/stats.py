"""The held-out experiment's numbers: per-task and across-task means of every table row, and the four target verdicts.

A results dict (what ``results.json`` holds) has ``rows``, the table rows in order (``base``, ``delta``, ...,
each a group of evaluated candidate adapters), and ``tasks``: task -> ``{"rows": {row: {"accuracies": [...],
"delta_cosines": [...], "delta_cosines_specific": [...], "item_scores": [[...], ...]}}}``, one value per candidate
(``item_scores``: each candidate's per-item scores, the same eval items in the same order for every row; absent in
a results.json from before they were recorded). Nothing here draws or writes; :mod:`.markdown` and :mod:`.figures`
render what :func:`summarize` returns.

The "beats" targets, (a) and (d), are judged by :func:`paired_bootstrap`: eval items and adapters are both sources
of noise, so each resample draws the items (the same draw for both rows: paired) and, within each row, its adapters.
A results.json without per-item scores falls back to the standard error over adapters, and says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..config import model_validate_or_raise
from ..errors import ConfigError
from .config import TargetConfig


def mean_std(values: Sequence[float] | None) -> tuple[float, float] | None:
    """Mean and population std (ddof=0) of ``values``; None when empty or absent."""
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


def mean(values: Sequence[float] | None) -> float | None:
    stats = mean_std(values)
    return None if stats is None else stats[0]


def recovered(row: float | None, base: float | None, oracle: float | None) -> float | None:
    """(row − base)/(oracle − base), None when a value is missing or the oracle does not beat base."""
    if row is None or base is None or oracle is None or oracle - base <= 0:
        return None
    return (row - base) / (oracle - base)


def validate(results: Any) -> None:
    if not isinstance(results, Mapping):
        raise ConfigError(f"results must be a dict, got {type(results).__name__}")
    for key, kind in (("tasks", Mapping), ("rows", list)):
        if key not in results:
            raise ConfigError(f"results is missing {key!r}; the pipeline must record it before the report is written")
        if not isinstance(results[key], kind):
            raise ConfigError(f"results[{key!r}] must be a {kind.__name__}, got {type(results[key]).__name__}")
    if not isinstance(results.get("seen_tasks", {}), Mapping):  # absent in runs from before the seen-task section
        raise ConfigError(f"results['seen_tasks'] must be a Mapping, got {type(results['seen_tasks']).__name__}")


def target_config(results: Mapping) -> TargetConfig:
    """The run's targets (``results["config"]["targets"]``); the defaults for a run that recorded none."""
    config = results.get("config")
    recorded = config.get("targets") if isinstance(config, Mapping) else None
    if recorded is None:
        return TargetConfig()
    return model_validate_or_raise(TargetConfig, recorded, "results['config']['targets']")


def heldout_tasks(results: Mapping) -> list[str]:
    """Held-out tasks that have results, in the order ``heldout_tasks`` lists them (default: all non-training tasks)."""
    train = set(results.get("train_tasks") or [])
    names = results.get("heldout_tasks") or [t for t in results["tasks"] if t not in train]
    return [t for t in names if t in results["tasks"]]


def table_rows(results: Mapping) -> list[str]:
    """``results["rows"]``, then any row a task has that the list forgot (never silently dropped)."""
    order = list(results["rows"])
    for entry in results["tasks"].values():
        order += [r for r in (entry.get("rows") or {}) if r not in order]
    return order


def task_means(results: Mapping, block: str = "tasks") -> dict[str, dict[str, dict[str, float | None]]]:
    """task -> row -> {"accuracy": mean, "delta_cosine": mean, ...}, rows that were measured: the held-out tasks
    (``block`` "tasks"), or every task of another block of the same shape ("seen_tasks")."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for task in heldout_tasks(results) if block == "tasks" else list(results.get(block) or {}):
        rows = results[block][task].get("rows") or {}
        out[task] = {
            r: {
                "accuracy": mean(v.get("accuracies")),
                "delta_cosine": mean(v.get("delta_cosines")),
                "delta_cosine_specific": mean(v.get("delta_cosines_specific")),
            }
            for r, v in rows.items()
            if v
        }
    return out


def _paired(per_task: Mapping, rows: Sequence[str], metric: str) -> dict[str, float] | None:
    """Across-task means of ``metric`` for ``rows``, over the tasks where all of them have it (so they compare)."""
    tasks = [t for t, r in per_task.items() if all(r.get(x, {}).get(metric) is not None for x in rows)]
    if not tasks:
        return None
    return {x: float(np.mean([per_task[t][x][metric] for t in tasks])) for x in rows}


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: re-rendering a report gives the same intervals


def interval_level(noise_se: float) -> float:
    """The two-sided coverage of ± ``noise_se`` standard errors of a normal distribution (2 → 0.954, 0 → 0).

    ``TargetConfig.noise_se`` says how many standard errors a difference must clear; the bootstrap's percentile
    interval at this coverage keeps that meaning (its lower end is above 0 where the normal approximation's
    difference − ``noise_se`` · s.e. would be) without assuming normality.
    """
    return math.erf(noise_se / math.sqrt(2))


def paired_bootstrap(
    hi: Sequence[Any],
    lo: Sequence[Any],
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, float]:
    """Percentile interval of the across-task mean of (mean of row ``hi``) − (mean of row ``lo``).

    ``hi[t]`` and ``lo[t]`` are task ``t``'s score matrices of the two rows, candidates × items, on the same items
    in the same order (a metric with no items, such as Δ-cosine, is one column). Each resample draws, on every task,
    the items with replacement — one draw for both rows, so the comparison is paired — and, within each row, its
    candidates with replacement; the statistic is the across-task mean of the two resampled rows' mean difference.
    Resampled means are weighted sums (draw counts × scores), so a resample costs one small matrix product per row.
    Deterministic given ``seed``. Returns ``diff`` (on the data), ``low`` and ``high`` (the interval's ends), ``se``
    (the resampled differences' standard deviation: the difference's bootstrap standard error), ``level`` and
    ``resamples``.
    """
    if not hi or len(hi) != len(lo):
        raise ValueError(
            f"paired_bootstrap needs the same number (≥ 1) of tasks for both rows, got {len(hi)}, {len(lo)}"
        )
    rng = np.random.default_rng(seed)
    draws = np.zeros(resamples)
    diff = 0.0
    for h, lw in zip(hi, lo):
        h, lw = np.asarray(h, dtype=np.float64), np.asarray(lw, dtype=np.float64)
        if h.ndim != 2 or lw.ndim != 2 or h.shape[1] != lw.shape[1] or 0 in h.shape or 0 in lw.shape:
            raise ValueError(
                f"paired_bootstrap needs candidates × items matrices on the same items, got {h.shape}, {lw.shape}"
            )
        n_items = h.shape[1]
        items = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=resamples)  # resamples × items
        for sign, m in ((1.0, h), (-1.0, lw)):
            n = m.shape[0]
            cands = rng.multinomial(n, np.full(n, 1 / n), size=resamples)  # resamples × candidates
            draws += sign * ((cands @ m) * items).sum(axis=1) / (n * n_items)
            diff += sign * float(m.mean())
    draws /= len(hi)
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return {
        "diff": diff / len(hi),
        "low": float(low),
        "high": float(high),
        "se": float(draws.std(ddof=1)) if resamples > 1 else 0.0,
        "level": level,
        "resamples": resamples,
    }


def _item_matrices(rows: Sequence[Mapping], row: str) -> list[np.ndarray] | None:
    """``row``'s candidates × items scores on every task (``rows``: each task's rows), or None when a task lacks
    them (a results.json from before they were recorded) or they do not line up with its accuracies."""
    out = []
    for r in rows:
        scores = r[row].get("item_scores")
        if not scores or len(scores) != len(r[row].get("accuracies") or []):
            return None
        if len({len(x) for x in scores}) != 1 or not scores[0]:
            return None
        out.append(np.asarray(scores, dtype=np.float64))
    return out


def _var_of_mean(values: Sequence[float]) -> float:
    """Squared standard error of the mean of ``values`` over adapters (sample variance / n); 0 for one adapter."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.var(ddof=1) / a.size) if a.size > 1 else 0.0


def _difference(
    results: Mapping, per_task: Mapping, hi: str, lo: str, metric: str, level: float, block: str = "tasks"
) -> dict[str, Any] | None:
    """Across-task mean of row ``hi`` minus row ``lo`` on ``metric``, with what says whether it is beyond noise.

    Over the tasks of results' ``block`` (held-out: ``tasks``; ``seen_tasks``) where both rows have the metric, with
    ``per_task`` that block's :func:`task_means`. ``test`` names how: ``"items and adapters"`` — a
    :func:`paired_bootstrap` interval (``low``, ``high``) at ``level`` over eval items and adapters, for accuracy with
    per-item scores on every task; ``"adapters"`` — the same over adapters alone, for Δ-cosine, which has no items;
    ``"s.e."`` — for accuracy without per-item scores (an old results.json), the standard error over adapters
    (``se``): each task's two row means are independent (different adapters), so the difference's variance is the
    sum of both means' squared standard errors, and the across-task mean divides it by the squared task count.
    """
    key = {"accuracy": "accuracies", "delta_cosine": "delta_cosines"}[metric]
    tasks = [t for t, r in per_task.items() if all(r.get(x, {}).get(metric) is not None for x in (hi, lo))]
    if not tasks:
        return None
    rows = [results[block][t]["rows"] for t in tasks]
    means = {x: float(np.mean([per_task[t][x][metric] for t in tasks])) for x in (hi, lo)}
    out: dict[str, Any] = {**means, "diff": means[hi] - means[lo]}
    if metric == "accuracy":
        mats = {x: _item_matrices(rows, x) for x in (hi, lo)}
        if mats[hi] is None or mats[lo] is None or any(a.shape[1] != b.shape[1] for a, b in zip(mats[hi], mats[lo])):
            var = sum(_var_of_mean(r[hi][key]) + _var_of_mean(r[lo][key]) for r in rows)
            return {**out, "test": "s.e.", "se": math.sqrt(var) / len(tasks)}
        test = "items and adapters"
    else:
        mats = {x: [np.asarray(r[x][key], dtype=np.float64)[:, None] for r in rows] for x in (hi, lo)}
        test = "adapters"
    boot = paired_bootstrap(mats[hi], mats[lo], level)
    return {**out, "test": test, "low": boot["low"], "high": boot["high"], "se": boot["se"], "level": level}


def _beyond_noise(d: Mapping[str, Any], noise_se: float) -> bool:
    """The difference is positive and beyond noise: the interval's lower end above 0, or (no per-item scores) the
    difference above ``noise_se`` standard errors over adapters."""
    if d["test"] == "s.e.":
        return d["diff"] > noise_se * d["se"] and d["diff"] > 0
    return d["low"] > 0 and d["diff"] > 0


def _diff_text(d: Mapping[str, Any], scale: float, spec: str, noise_se: float) -> str:
    beyond = _beyond_noise(d, noise_se)
    if d["test"] == "s.e.":
        verdict = "" if beyond else f", within {noise_se:g} standard errors"
        return (
            f"difference {d['diff'] * scale:+{spec}} ± {d['se'] * scale:{spec}} "
            f"(s.e. over adapters; items not resampled){verdict}"
        )
    how = "paired bootstrap over items and adapters" if d["test"] == "items and adapters" else "bootstrap over adapters"
    verdict = "" if beyond else ", not above 0"
    return (
        f"difference {d['diff'] * scale:+{spec}}, {d['level'] * 100:.0f} % interval "
        f"[{d['low'] * scale:+{spec}}, {d['high'] * scale:+{spec}}] ({how}){verdict}"
    )


def _not_measured(rows: Sequence[str], metric: str) -> str:
    return f"not measured (needs {metric} of rows {', '.join(rows)} on a common held-out task)"


def _verdicts(results: Mapping, per_task: Mapping, targets: TargetConfig) -> dict[str, dict[str, Any]]:
    """Each target's verdict (True/False/None) and a one-line detail with the numbers behind it.

    The comparisons (a) and (d) hold only beyond noise: the lower end of the difference's bootstrap interval at the
    coverage of ± ``targets.noise_se`` standard errors (:func:`interval_level`) must be above 0 — over eval items and
    adapters (seeds × generated adapters) for accuracy, over adapters for Δ-cosine. Without per-item scores (an old
    results.json) accuracy falls back to ``noise_se`` standard errors over adapters.
    """
    se = targets.noise_se
    level = interval_level(se)
    t: dict[str, dict[str, Any]] = {}
    acc = _difference(results, per_task, "delta", "weight_only", "accuracy", level)
    cos = _difference(results, per_task, "delta", "weight_only", "delta_cosine", level)
    if acc is None or cos is None:
        t["delta_beats_weight_only"] = {
            "ok": None,
            "detail": _not_measured(["delta", "weight_only"], "accuracy and Δ-cosine"),
        }
    else:
        t["delta_beats_weight_only"] = {
            "ok": _beyond_noise(acc, se) and _beyond_noise(cos, se),
            "accuracy": acc,
            "delta_cosine": cos,
            "detail": f"accuracy {acc['delta'] * 100:.1f} vs {acc['weight_only'] * 100:.1f} "
            f"({_diff_text(acc, 100, '.1f', se)}), "
            f"Δ-cosine {cos['delta']:.3f} vs {cos['weight_only']:.3f} ({_diff_text(cos, 1, '.3f', se)})",
        }
    m = _paired(per_task, ["base", "delta", "oracle"], "accuracy")
    rec = None if m is None else recovered(m["delta"], m["base"], m["oracle"])
    if m is None:
        t["recovers_oracle_gain"] = {"ok": None, "detail": _not_measured(["base", "delta", "oracle"], "accuracy")}
    elif rec is None:
        t["recovers_oracle_gain"] = {
            "ok": None,
            "detail": f"not measured (oracle {m['oracle'] * 100:.1f} does not beat base {m['base'] * 100:.1f})",
        }
    else:
        t["recovers_oracle_gain"] = {
            "ok": rec >= targets.recovers_oracle_gain,
            "value": rec,
            "detail": f"{rec * 100:.1f} % (base {m['base'] * 100:.1f}, Δ-augmented "
            f"{m['delta'] * 100:.1f}, oracle {m['oracle'] * 100:.1f})",
        }
    c = _paired(per_task, ["delta"], "delta_cosine")
    t["delta_cosine_to_oracle"] = (
        {"ok": None, "detail": _not_measured(["delta"], "Δ-cosine")}
        if c is None
        else {"ok": c["delta"] >= targets.delta_cosine_to_oracle, "detail": f"{c['delta']:.3f}"}
    )
    r = _difference(results, per_task, "delta", "delta_random_condition", "accuracy", level)
    t["random_conditions_hurt"] = (
        {"ok": None, "detail": _not_measured(["delta", "delta_random_condition"], "accuracy")}
        if r is None
        else {
            "ok": _beyond_noise(r, se),
            "accuracy": r,
            "detail": f"random conditions {r['delta_random_condition'] * 100:.1f} vs {r['delta'] * 100:.1f} "
            f"(Δ-augmented minus random: {_diff_text(r, 100, '.1f', se)})",
        }
    )
    return t


def seen_checks(results: Mapping, seen: Mapping, targets: TargetConfig) -> dict[str, dict[str, Any]]:
    """What the seen-task section asks (fit, not generalisation): at least one generator's adapters recover
    ``targets.seen_recovers_gain`` of the own teachers' gain over base (median over the seen tasks whose teachers
    beat base; every generator row's median is reported, the best one judged), and the Δ-augmented generator's
    random conditions lose accuracy beyond noise (as target (d), over the seen tasks)."""
    out: dict[str, dict[str, Any]] = {}
    shares: dict[str, dict[str, float]] = {}
    for g in generator_rows(results):
        per = {
            t: r
            for t, v in seen.items()
            if all(v.get(x, {}).get("accuracy") is not None for x in ("base", g, "oracle"))
            and (r := recovered(v[g]["accuracy"], v["base"]["accuracy"], v["oracle"]["accuracy"])) is not None
        }
        if per:
            shares[g] = per
    if not shares:
        out["seen_recovers_gain"] = {"ok": None, "detail": "not measured (no seen task whose teachers beat base)"}
    else:
        medians = {g: float(np.median(list(per.values()))) for g, per in shares.items()}
        best = max(medians, key=medians.get)
        others = [f"{g} {m * 100:.0f} %" for g, m in medians.items() if g != best]
        out["seen_recovers_gain"] = {
            "ok": medians[best] >= targets.seen_recovers_gain,
            "value": medians[best],
            "row": best,
            "by_row": medians,
            "detail": f"best {best}: median {medians[best] * 100:.0f} % over {len(shares[best])} seen tasks ("
            + ", ".join(f"{t} {r * 100:.0f} %" for t, r in shares[best].items())
            + ")"
            + (f"; the other generators: {', '.join(others)}" if others else ""),
        }
    level = interval_level(targets.noise_se)
    r = _difference(results, seen, "delta", "delta_random_condition", "accuracy", level, block="seen_tasks")
    out["seen_random_conditions_hurt"] = (
        {
            "ok": None,
            "detail": _not_measured(["delta", "delta_random_condition"], "accuracy").replace("held-out", "seen"),
        }
        if r is None
        else {
            "ok": _beyond_noise(r, targets.noise_se),
            "accuracy": r,
            "detail": f"random conditions {r['delta_random_condition'] * 100:.1f} vs {r['delta'] * 100:.1f} "
            f"(Δ-augmented minus random: {_diff_text(r, 100, '.1f', targets.noise_se)})",
        }
    )
    return out


def generator_rows(results: Mapping) -> list[str]:
    """The run's generator rows (``results["generator_rows"]``; runs from before it was recorded had these two)."""
    return list(results.get("generator_rows") or ["weight_only", "delta"])


def floor(results: Mapping, per_task: Mapping, targets: TargetConfig, block: str = "tasks") -> dict[str, Any] | None:
    """The floor a generator row is judged against: the best baseline row (``results["baseline_rows"]``, default the
    average merge) by across-task mean accuracy over the tasks of ``block`` where every measured baseline has a
    score, and each generator row's (``results["generator_rows"]``) difference to it, paired-bootstrapped as (a).
    None when no baseline was measured."""
    names = [r for r in results.get("baseline_rows") or ["average_merge"] if _over_tasks(per_task, r, "accuracy")]
    means = _paired(per_task, names, "accuracy") if names else None
    if not means:
        return None
    best = max(means, key=means.get)
    level = interval_level(targets.noise_se)
    gens = {}
    for g in generator_rows(results):
        d = _difference(results, per_task, g, best, "accuracy", level, block)
        if d is not None:
            gens[g] = {
                **d,
                "beyond_noise": _beyond_noise(d, targets.noise_se),
                "text": _diff_text(d, 100, ".1f", targets.noise_se),
            }
    return {"row": best, "accuracy": means[best], "baselines": means, "generators": gens}


COMPARE_AGAINST = ("weight_only", "average_merge")  # every other generator row is compared with these two
RETRIEVAL_AGAINST = ("average_merge", "multitask")  # and every retrieval row with these (the baseline issue's seed)


def retrieval_rows(results: Mapping) -> list[str]:
    """The retrieve-and-merge rows: the baselines other than the mean merge, the multi-task LoRA and Arrow."""
    return [r for r in results.get("baseline_rows") or [] if r not in ("average_merge", "multitask", "arrow")]


def comparisons(
    results: Mapping,
    per_task: Mapping,
    targets: TargetConfig,
    block: str = "tasks",
    rows: Sequence[str] | None = None,
    against: Sequence[str] = COMPARE_AGAINST,
) -> dict[str, dict[str, Any]]:
    """Each of ``rows`` (default: the generator rows, ``results["generator_rows"]``) against each row of ``against``
    (default: the weight-only generator and the mean merge) on ``block``'s tasks: the accuracy difference,
    paired-bootstrapped as (a), its standard error and how many standard errors it is (``z``).
    ``{row: {reference: difference}}``; a pair without a common task is left out."""
    level = interval_level(targets.noise_se)
    out: dict[str, dict[str, Any]] = {}
    for g in generator_rows(results) if rows is None else rows:
        for ref in against:
            if g == ref:
                continue
            d = _difference(results, per_task, g, ref, "accuracy", level, block)
            if d is None:
                continue
            z = d["diff"] / d["se"] if d.get("se") else None
            out.setdefault(g, {})[ref] = {
                **d,
                "z": z,
                "beyond_noise": _beyond_noise(d, targets.noise_se),
                "text": _diff_text(d, 100, ".1f", targets.noise_se)
                + ("" if z is None else f"; {z:+.1f} standard errors"),
            }
    return out


def beats_base(results: Mapping, per_task: Mapping, targets: TargetConfig, block: str = "tasks") -> dict[str, Any]:
    """Per generator row, each task of ``block`` on which it beats the base model, judged per task as (a): the paired
    bootstrap interval of its accuracy minus base's above 0 (the seed criterion "Δ-only-to-LoRA beats the base model
    on at least one held-out task", asked of every generator).
    ``{row: {"tasks": {task: difference}, "wins": [tasks beyond noise]}}``."""
    level = interval_level(targets.noise_se)
    out: dict[str, Any] = {}
    for g in generator_rows(results):
        per = {}
        for t in per_task:
            d = _difference(results, {t: per_task[t]}, g, "base", "accuracy", level, block)
            if d is not None:
                per[t] = {**d, "beyond_noise": _beyond_noise(d, targets.noise_se)}
        if per:
            out[g] = {"tasks": per, "wins": [t for t, d in per.items() if d["beyond_noise"]]}
    return out


def _over_tasks(per_task: Mapping, row: str, metric: str) -> list[float]:
    """``row``'s per-task means of ``metric``, over the held-out tasks where it was measured."""
    return [v[row][metric] for v in per_task.values() if v.get(row, {}).get(metric) is not None]


def row_means(results: Mapping, per_task: Mapping) -> dict[str, dict[str, Any]]:
    """Per-row across-task means (accuracy, delta_cosine, delta_cosine_specific, n_tasks) of :func:`task_means`."""
    rows = {}
    for row in table_rows(results):
        accs = _over_tasks(per_task, row, "accuracy")
        rows[row] = {
            "accuracy": mean(accs),
            "delta_cosine": mean(_over_tasks(per_task, row, "delta_cosine")),
            "delta_cosine_specific": mean(_over_tasks(per_task, row, "delta_cosine_specific")),
            "n_tasks": len(accs),
        }
    return rows


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` (0-based; ties share their mean rank)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # ties: the mean of their ranks
        tied = x == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on ranks; ties at their mean rank); None with < 3 points or no
    spread."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return _pearson(_ranks(x), _ranks(y))


def alignment(results: Mapping, block: str = "tasks", noise_se: float = 2.0) -> dict[str, Any] | None:
    """Does better Δ alignment go with better accuracy? Over every adapter candidate of ``block`` with both scores
    (every row but base and the oracle — the oracle's teachers define the Δ target), the accuracy gain over the
    task's base model against the adapter's Δ-cosine to the oracle (raw and task-specific): Pearson's r and
    Spearman's ρ pooled over adapters and tasks, ρ's bootstrap interval over adapters (the coverage of ± ``noise_se``
    standard errors), and the mean of the per-task ρ (within a task, so task difficulty cannot make the correlation).
    None when fewer than 3 adapters have both."""
    points: list[tuple[str, float, float, float | None]] = []  # (task, gain, cos, specific cos)
    for task, entry in (results.get(block) or {}).items():
        rows = entry.get("rows") or {}
        base = mean(rows.get("base", {}).get("accuracies"))
        if base is None:
            continue
        for row, r in rows.items():
            if row in ("base", "oracle"):
                continue
            accs, cos = r.get("accuracies") or [], r.get("delta_cosines") or []
            spec = r.get("delta_cosines_specific") or []
            if not cos or len(cos) != len(accs):
                continue  # a row without a Δ per adapter (a routed one)
            spec = spec if len(spec) == len(cos) else [None] * len(cos)
            points += [(task, a - base, c, s) for a, c, s in zip(accs, cos, spec)]
    if len(points) < 3:
        return None
    gain = np.array([p[1] for p in points])
    out: dict[str, Any] = {"n_adapters": len(points), "n_tasks": len({p[0] for p in points})}
    level = interval_level(noise_se)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, len(points), size=(BOOTSTRAP_RESAMPLES, len(points)))
    for key, col in (("raw", 2), ("specific", 3)):
        if any(p[col] is None for p in points):
            continue
        x = np.array([p[col] for p in points], float)
        rho = spearman(x, gain)
        boots = [b for b in (spearman(x[i], gain[i]) for i in idx) if b is not None]
        lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]) if boots else (None, None)
        within = []
        for t in sorted({p[0] for p in points}):
            sel = np.array([p[0] == t for p in points])
            r_t = spearman(x[sel], gain[sel])
            if r_t is not None:
                within.append(r_t)
        out[key] = {
            "pearson": _pearson(x, gain),
            "spearman": rho,
            "spearman_interval": None if lo is None else [float(lo), float(hi)],
            "within_task_spearman": mean(within),
            "tasks_with_spread": len(within),
            "correlates": None if lo is None else bool(lo > 0),
        }
    return out


def summarize(results: Mapping, targets: TargetConfig | None = None) -> dict[str, Any]:
    """Per-row across-held-out-task means (accuracy, delta_cosine, delta_cosine_specific, n_tasks), the same over the
    seen tasks (``seen_rows``; ``results["seen_tasks"]``, a block shaped like ``tasks``) and the four target booleans
    (None = not measurable), judged against ``targets`` (default: the run's own, see :func:`target_config`)."""
    validate(results)
    targets = target_config(results) if targets is None else targets
    per_task = task_means(results)
    retrieval = retrieval_rows(results)
    seen = task_means(results, "seen_tasks")
    details = _verdicts(results, per_task, targets)
    return {
        "heldout_tasks": list(per_task),
        "rows": row_means(results, per_task),
        "floor": floor(results, per_task, targets),
        "seen_floor": floor(results, seen, targets, "seen_tasks") if seen else None,
        "seen_tasks": list(seen),  # training tasks scored from held-back prompts; judged by seen_checks
        "seen_rows": row_means(results, seen),
        "seen_checks": seen_checks(results, seen, targets) if seen else {},
        "comparisons": comparisons(results, per_task, targets),
        "beats_base": beats_base(results, per_task, targets),
        "retrieval_comparisons": comparisons(results, per_task, targets, rows=retrieval, against=RETRIEVAL_AGAINST),
        "seen_retrieval_comparisons": (
            comparisons(results, seen, targets, "seen_tasks", rows=retrieval, against=RETRIEVAL_AGAINST) if seen else {}
        ),
        "seen_comparisons": comparisons(results, seen, targets, "seen_tasks") if seen else {},
        "targets": {k: v["ok"] for k, v in details.items()},
        "target_details": details,
        "alignment": alignment(results, noise_se=targets.noise_se),
        "seen_alignment": alignment(results, "seen_tasks", targets.noise_se) if seen else None,
    }


__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "alignment",
    "spearman",
    "BOOTSTRAP_SEED",
    "COMPARE_AGAINST",
    "RETRIEVAL_AGAINST",
    "retrieval_rows",
    "beats_base",
    "comparisons",
    "generator_rows",
    "heldout_tasks",
    "interval_level",
    "mean",
    "mean_std",
    "floor",
    "paired_bootstrap",
    "recovered",
    "row_means",
    "seen_checks",
    "summarize",
    "table_rows",
    "target_config",
    "task_means",
    "validate",
]
