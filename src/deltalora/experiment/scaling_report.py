"""The task-scaling study's report: ``results.json``, ``scaling.md`` and the curve ``figures/scaling_curve.png``."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..paths import atomic_write_bytes
from .figures import new_figure, save_png
from .markdown import DASH, fmt, table, timing_table

REPORT = "scaling.md"
ALL = "all"  # the curve's point for a fold's whole pool, whose size differs by one between folds of unequal size


def size_order(key) -> tuple[bool, int]:
    """Sort key of the curve's sizes: the counts (ints, or their strings once read back from JSON), then ``ALL``."""
    return (key == ALL, 0 if key == ALL else int(key))


LABELS = {
    "generator": "generator",
    "average_merge": "mean merge of the training teachers",
    "retrieval": "retrieval",
}


def _labels(cfg: Mapping) -> dict[str, str]:
    r = cfg.get("retrieval") or {}
    return {
        **LABELS,
        "generator": f"generator ({cfg['train']['generator']}, {cfg['train']['steps']} steps)",
        "retrieval": f"{r.get('by', 'delta')}-retrieval, top {cfg.get('k')} + {r.get('merge', 'avg')} merge",
    }


def curve_figure(results: Mapping, path: Path):
    """Against the number of training tasks (log₂ axis), per row: the held-out gain over base (points) and the share
    of the own teachers' gain (%), each ± 1 SE over tasks."""
    curve = results["summary"]["curve"]
    if not any(curve.values()):
        return "curve skipped: no finished fold"
    labels = _labels(results["config"])
    at, tick = _x_axis(curve, results["summary"].get("pool_sizes") or [])
    fig, (ax, ax_share) = new_figure(ncols=2)
    for row, pts in curve.items():
        keys = sorted(pts, key=size_order)
        if not keys:
            continue
        cells = [pts[k] for k in keys]
        sizes = [at[k] for k in keys]
        kw = {"marker": "o", "capsize": 3, "label": labels.get(row, row)}
        ax.errorbar(sizes, [100 * c["gain"] for c in cells], yerr=[100 * c["gain_se"] for c in cells], **kw)
        shared = [(n, c) for n, c in zip(sizes, cells) if c["share_of_own_gain"] is not None]
        if shared:
            ax_share.errorbar(
                [n for n, _ in shared],
                [100 * c["share_of_own_gain"] for _, c in shared],
                yerr=[100 * c["share_se"] for _, c in shared],
                **kw,
            )
    own = 100 * results["config"]["min_own_gain"]
    ticks, tick_labels = [at[k] for k in tick], list(tick.values())
    for a, ylabel, title in (
        (ax, "held-out gain over base (points, ± 1 SE over tasks)", "Held-out gain"),
        (ax_share, f"% of the own teachers' gain (tasks gaining ≥ {own:g} points)", "Share of the own teachers' gain"),
    ):
        a.set_xscale("log", base=2)
        a.set_xticks(ticks, tick_labels)  # the sizes themselves, not powers of two
        a.minorticks_off()
        a.axhline(0, color="grey", lw=1)
        a.set_xlabel("training tasks")
        a.set_ylabel(ylabel)
        a.set_title(title)
    ax.legend(fontsize=7)
    save_png(fig, path)
    return path


def _x_axis(curve: Mapping, pools: Sequence[int]) -> tuple[dict, dict]:
    """Where each size of the curve sits on the (log₂) axis and its tick label. A count sits at itself; the whole
    pools at their mean size, or ×1.5 past the largest count when they would crowd it (a fold whose pool is
    65 beside a size of 64). A size that some folds' pools are too small for is scored on fewer tasks than the rest:
    its label says on how many."""
    keys = sorted({k for pts in curve.values() for k in pts}, key=size_order)
    counts = [int(k) for k in keys if k != ALL]
    at: dict = {k: int(k) for k in keys if k != ALL}
    if ALL in keys:
        mean_pool = statistics.fmean(pools) if pools else 2 * max(counts, default=1)
        at[ALL] = max(mean_pool, 1.5 * counts[-1]) if counts else mean_pool
    n = {k: max(pts[k]["n_tasks"] for pts in curve.values() if k in pts) for k in keys}
    most = max(n.values(), default=0)
    tick = {k: _size_label(k, pools) + (f"\n({n[k]} of {most} tasks)" if n[k] < most else "") for k in keys}
    return at, tick


def _size_label(key, pools) -> str:
    """A curve size as the report shows it: the count, or ``all`` with the whole pools' sizes."""
    if key != ALL:
        return str(key)
    lo, hi = (min(pools), max(pools)) if pools else (None, None)
    return ALL if lo is None else f"{ALL} ({lo})" if lo == hi else f"{ALL} ({lo}–{hi})"


def _precisions(results: Mapping) -> str:
    """The evaluator's precision per finished fold, e.g. ``bfloat16`` or ``bfloat16 (folds 0, 1), float32 (fold 2)``."""
    by: dict[str, list[str]] = {}
    for fold, p in sorted((results.get("eval_precision") or {}).items(), key=lambda kv: int(kv[0])):
        by.setdefault(p, []).append(str(fold))
    if len(by) <= 1:
        return next(iter(by), results["config"]["eval"].get("precision", "float32"))
    return ", ".join(f"{p} (fold{'s' if len(f) > 1 else ''} {', '.join(f)})" for p, f in by.items())


def _pm(gain: float, se: float) -> str:
    """A gain and its standard error as the report prints them, in points: ``+4.8 ± 1.6``."""
    return f"{100 * gain:+.1f} ± {100 * se:.1f}"


def _family_table(s: Mapping, labels: Mapping[str, str]) -> list[str]:
    """Per task family: the own teachers' gain and every row's at the generator's largest size (none without
    families in the summary: studies saved before they were recorded)."""
    fams = s.get("by_family") or {}
    if not fams:
        return []
    size = _size_label(next(iter(fams.values()))["size"], s.get("pool_sizes"))
    rows = ["own", *s["curve"]]
    head = ["family", "tasks", "own teachers"] + [labels.get(r, r) for r in rows[1:]]

    def cell(c, n):  # one task has no standard error
        return DASH if c is None else _pm(c["gain"], c["gain_se"]) if n > 1 else f"{100 * c['gain']:+.1f}"

    body = [[fam, str(e["n_tasks"])] + [cell(e.get(r), e["n_tasks"]) for r in rows] for fam, e in fams.items()]
    return [
        "",
        f"## By task family, {size} training tasks",
        "",
        "Gain over base (points, ± SE over the family's held-out tasks) of the tasks' own teachers and of each row.",
        "",
    ] + table(head, body)[:-1]  # the caller spaces the next section


def _fold_table(s: Mapping, labels: Mapping[str, str]) -> list[str]:
    """Per fold: each row's gain at its largest size and the generator-minus-baseline change over sizes (none for a
    study of one finished fold, or saved before folds were summarized apart)."""
    folds = s.get("by_fold") or {}
    if not folds:
        return []
    pools = s.get("pool_sizes")
    rows = [r for r, pts in s["curve"].items() if pts]
    first = next(iter(folds.values()))
    spans = first["slopes"]
    head = ["fold", "held-out tasks"] + [labels.get(r, r) for r in rows]
    head += [
        f"generator − {labels.get(r, r)}, change {_size_label(d['from'], pools)} → {_size_label(d['to'], pools)}"
        for r, d in spans.items()
    ]

    body = []
    for fold, e in folds.items():
        cells = [_pm(c["gain"], c["gain_se"]) if (c := e["top"].get(r)) else DASH for r in rows]
        cells += [_pm(d["difference"], d["se"]) if (d := e["slopes"].get(r)) else DASH for r in spans]
        body.append([fold, str(e["n_tasks"])] + cells)
    size = _size_label(next(iter(first["top"].values()))["size"], pools) if first["top"] else DASH
    return [
        "",
        f"## By fold, {size} training tasks",
        "",
        "Each fold's held-out tasks alone: every row's gain over base (points, ± SE over the fold's tasks) with its "
        "whole pool, and the paired difference of the changes between the smallest and largest size.",
        "",
    ] + table(head, body)[:-1]  # the caller spaces the next section


def _fold_signs(s: Mapping, row: str) -> str:
    """How many folds alone show the generator's change above the baseline's (`` Fold by fold, the difference is
    positive in 4 of 5.``); empty without per-fold summaries."""
    diffs = [e["slopes"][row]["difference"] for e in (s.get("by_fold") or {}).values() if row in e["slopes"]]
    if not diffs:
        return ""
    return f" Fold by fold, the difference is positive in {sum(d > 0 for d in diffs)} of {len(diffs)}."


def _grouped(d: Mapping) -> str:
    """A paired difference with each group of siblings held out together as one unit (`` Counting ... ``); empty where
    no group joins tasks (or the study was saved before groups were recorded)."""
    g = d.get("grouped")
    if not g:
        return ""
    within = "beyond 2 SE" if g["beyond_2se"] else "within 2 SE"
    return (
        f" Counting each group of sibling tasks held out together as one unit ({g['n_units']} units), the "
        f"difference is {_pm(g['difference'], g['se'])} ({within})."
    )


def render(results: Mapping, figure) -> str:
    cfg, s = results["config"], results["summary"]
    m = results.get("machine") or {}
    labels = _labels(cfg)
    finished = results["finished_folds"]
    lines = [
        f"# {results['title']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Backbone {results['backbone']}; {sum(len(f) for f in results['folds'])} tasks in {len(results['folds'])} "
        f"folds (stratified by family), {len(finished)} finished ({finished}); {cfg['draws']} draws of nested "
        f"training sets; {cfg['eval']['limit'] or 'all'} eval items per task, scored in {_precisions(results)}. "
        f"Machine: {m.get('description', DASH)}. "
        f"Wall time of this call: {results['wall_seconds']:.0f} s.",
        "",
        "Gain: accuracy minus the base model's, in points, on the fold's held-out tasks; mean over tasks of each "
        "task's mean over draws and adapters, ± the standard error over tasks; *draw std*: the spread of the "
        f"across-task mean between draws. *% own*: the share of the task's own teachers' gain (tasks whose own "
        f"teachers gain ≥ {100 * cfg['min_own_gain']:g} points).",
        "",
    ]
    body = []
    for row, pts in s["curve"].items():
        for n in sorted(pts, key=size_order):
            c = pts[n]
            share = c["share_of_own_gain"]
            body.append(
                [
                    labels.get(row, row),
                    _size_label(n, s.get("pool_sizes")),
                    _pm(c["gain"], c["gain_se"]),
                    fmt(100 * c["draw_std"], ".1f"),
                    DASH if share is None else f"{100 * share:.0f} ± {100 * c['share_se']:.0f}",
                    str(c["n_tasks"]),
                ]
            )
    lines += table(["row", "training tasks", "gain (pts)", "draw std", "% own", "tasks"], body)
    if isinstance(figure, Path):
        lines += [f"![scaling curve](figures/{figure.name})", ""]
    elif figure:
        lines += [str(figure), ""]
    lines += ["## Do more tasks help the generator more than the baselines?", ""]
    if not s["slopes"]:
        lines += ["Not measurable yet: the generator needs two sizes on at least two tasks.", ""]
    for row, d in s["slopes"].items():
        label = labels.get(row, row)
        if not d["beyond_2se"]:
            verdict = "about as much as (within 2 SE)"
        else:
            verdict = "more than" if d["difference"] > 0 else "less than"
        span = f"{_size_label(d['from'], s.get('pool_sizes'))} → {_size_label(d['to'], s.get('pool_sizes'))}"
        lines.append(
            f"- {span} training tasks: the generator's gain changes by "
            f"{100 * d['generator_change']:+.1f} points, that of the {label} by {100 * d['baseline_change']:+.1f}; "
            f"difference {_pm(d['difference'], d['se'])} (SE over {d['n_tasks']} tasks): more "
            f"tasks help the generator {verdict} they help the {label}.{_fold_signs(s, row)}{_grouped(d)}"
        )
    for row, d in s["slopes"].items():
        if gap := d.get("at_largest"):
            lines.append(
                f"- At {_size_label(d['to'], s.get('pool_sizes'))} training tasks, the generator's gain minus that of "
                f"the {labels.get(row, row)}: {_pm(gap['difference'], gap['se'])} (paired, SE over {gap['n_tasks']} "
                f"tasks; {'beyond' if gap['beyond_2se'] else 'within'} 2 SE).{_grouped(gap)}"
            )
    lines += _fold_table(s, labels)
    lines += _family_table(s, labels)
    lines += ["", "## Timing", ""] + timing_table(results.get("timing") or {}, results.get("timing_all_calls"))
    return "\n".join(lines + [""])


def write_scaling_report(out: str | Path, results: dict, *, save_results: bool = True) -> Path:
    """results.json (unless re-rendering from it: ``save_results=False``), scaling.md and the curve into ``out``;
    the report's path."""
    out = Path(out)
    fig = curve_figure(results, out / "figures" / "scaling_curve.png")
    if save_results:
        atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    path = out / REPORT
    atomic_write_bytes(path, render(results, fig).encode())
    return path


__all__ = ["ALL", "REPORT", "size_order", "render", "write_scaling_report"]
