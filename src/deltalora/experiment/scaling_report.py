"""The task-scaling study's report: ``results.json``, ``scaling.md`` and the curve ``figures/scaling_curve.png``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ..paths import atomic_write_bytes
from .figures import new_figure, save_png
from .markdown import DASH, fmt, table

REPORT = "scaling.md"
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
    """Gain over base (points) against the number of training tasks (log₂ axis), ± 1 SE over tasks, per row."""
    curve = results["summary"]["curve"]
    if not any(curve.values()):
        return "curve skipped: no finished fold"
    labels = _labels(results["config"])
    fig, (ax,) = new_figure()
    for row, pts in curve.items():
        sizes = sorted(int(n) for n in pts)
        if not sizes:
            continue
        ys = [100 * pts[_key(pts, n)]["gain"] for n in sizes]
        es = [100 * pts[_key(pts, n)]["gain_se"] for n in sizes]
        ax.errorbar(sizes, ys, yerr=es, marker="o", capsize=3, label=labels.get(row, row))
    ax.set_xscale("log", base=2)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xlabel("training tasks")
    ax.set_ylabel("held-out gain over base (points, ± 1 SE over tasks)")
    ax.set_title("Held-out gain against the number of training tasks")
    ax.legend(fontsize=7)
    save_png(fig, path)
    return path


def _key(pts: Mapping, n: int):
    return n if n in pts else str(n)  # int keys in memory, str keys once read back from JSON


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
        f"training sets; {cfg['eval']['limit'] or 'all'} eval items per task. Machine: {m.get('description', DASH)}. "
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
        for n in sorted(int(k) for k in pts):
            c = pts[_key(pts, n)]
            share = c["share_of_own_gain"]
            body.append(
                [
                    labels.get(row, row),
                    str(n),
                    f"{100 * c['gain']:+.1f} ± {100 * c['gain_se']:.1f}",
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
        lines.append(
            f"- {d['from']} → {d['to']} training tasks: the generator's gain changes by "
            f"{100 * d['generator_change']:+.1f} points, the {label}'s by {100 * d['baseline_change']:+.1f}; "
            f"difference {100 * d['difference']:+.1f} ± {100 * d['se']:.1f} (SE over {d['n_tasks']} tasks): more "
            f"tasks help the generator {verdict} they help the {label}."
        )
    return "\n".join(lines + [""])


def write_scaling_report(out: str | Path, results: dict) -> Path:
    """results.json, scaling.md and the curve into ``out``; the report's path."""
    out = Path(out)
    fig = curve_figure(results, out / "figures" / "scaling_curve.png")
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    path = out / REPORT
    atomic_write_bytes(path, render(results, fig).encode())
    return path


__all__ = ["REPORT", "render", "write_scaling_report"]
