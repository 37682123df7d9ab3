"""The held-out experiment's report: ``results.json``, ``report.md`` and its PNG figures.

:func:`summarize` turns a results dict into per-row across-task means and the four target verdicts;
:func:`write_report` renders that, the per-task tables, the timing table and the figures (accuracy
bars, training-loss and Δ-cosine curves from JSONL logs, an optional t-SNE of Δ vectors). A figure
whose input is absent is skipped with a one-line reason in the report; only a malformed ``results``
(:class:`ConfigError`) or a log path that does not exist (:class:`FileNotFoundError`) is an error.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .paths import atomic_write_bytes
from .training.logs import LogCurves, read_log, series

DASH = "—"
RECOVERY_TARGET = 0.8  # share of the oracle's gain over base the Δ-augmented generator should recover
COSINE_TARGET = 0.8  # mean Δ-cosine to the oracle teacher the Δ-augmented generator should reach
NOISE_SE = 2.0  # a "beats" / "loses" target holds only when the mean difference exceeds this many standard errors
TARGETS = {
    "delta_beats_weight_only": ("a", "Δ-augmented beats weight-only on mean accuracy and mean Δ-cosine"),
    "recovers_oracle_gain": ("b", f"Δ-augmented recovers ≥ {RECOVERY_TARGET * 100:.0f} % of the oracle's gain over base"),
    "delta_cosine_to_oracle": ("c", f"Δ-augmented mean Δ-cosine to oracle ≥ {COSINE_TARGET}"),
    "random_conditions_hurt": ("d", "Δ-augmented loses accuracy with random conditions"),
}


def _mean_std(values: Sequence[float] | None) -> tuple[float, float] | None:
    """Mean and population std (ddof=0) of ``values``; None when empty or absent."""
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


def _mean(values: Sequence[float] | None) -> float | None:
    stats = _mean_std(values)
    return None if stats is None else stats[0]


def _pm(values: Sequence[float] | None, scale: float, digits: int) -> str:
    """``"mean ± std"`` of ``values`` × ``scale`` with ``digits`` decimals, or a dash."""
    stats = _mean_std(values)
    if stats is None:
        return DASH
    return f"{stats[0] * scale:.{digits}f} ± {stats[1] * scale:.{digits}f}"


def _fmt(x: float | None, spec: str) -> str:
    return DASH if x is None else format(x, spec)


def _recovered(row: float | None, base: float | None, oracle: float | None) -> float | None:
    """(row − base)/(oracle − base), None when a value is missing or the oracle does not beat base."""
    if row is None or base is None or oracle is None or oracle - base <= 0:
        return None
    return (row - base) / (oracle - base)


def _validate(results: Any) -> None:
    if not isinstance(results, Mapping):
        raise ConfigError(f"results must be a dict, got {type(results).__name__}")
    for key, kind in (("tasks", Mapping), ("rows", list)):
        if key not in results:
            raise ConfigError(f"results is missing {key!r}; the pipeline must record it before the report is written")
        if not isinstance(results[key], kind):
            raise ConfigError(f"results[{key!r}] must be a {kind.__name__}, got {type(results[key]).__name__}")


def _heldout(results: Mapping) -> list[str]:
    """Held-out tasks that have results, in the order ``heldout_tasks`` lists them (default: all non-training tasks)."""
    train = set(results.get("train_tasks") or [])
    names = results.get("heldout_tasks") or [t for t in results["tasks"] if t not in train]
    return [t for t in names if t in results["tasks"]]


def _row_order(results: Mapping) -> list[str]:
    """``results["rows"]``, then any row a task has that the list forgot (never silently dropped)."""
    order = list(results["rows"])
    for entry in results["tasks"].values():
        order += [r for r in (entry.get("rows") or {}) if r not in order]
    return order


def _task_means(results: Mapping) -> dict[str, dict[str, dict[str, float | None]]]:
    """task -> row -> {"accuracy": mean, "delta_cosine": mean}, held-out tasks only, rows that were measured."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for task in _heldout(results):
        rows = results["tasks"][task].get("rows") or {}
        out[task] = {r: {"accuracy": _mean(v.get("accuracies")), "delta_cosine": _mean(v.get("delta_cosines")),
                         "delta_cosine_specific": _mean(v.get("delta_cosines_specific"))}
                     for r, v in rows.items() if v}
    return out


def _paired(per_task: Mapping, rows: Sequence[str], metric: str) -> dict[str, float] | None:
    """Across-task means of ``metric`` for ``rows``, over the tasks where all of them have it (so they compare)."""
    tasks = [t for t, r in per_task.items() if all(r.get(x, {}).get(metric) is not None for x in rows)]
    if not tasks:
        return None
    return {x: float(np.mean([per_task[t][x][metric] for t in tasks])) for x in rows}


def _var_of_mean(values: Sequence[float]) -> float:
    """Squared standard error of the mean of ``values`` over adapters (sample variance / n); 0 for one adapter."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.var(ddof=1) / a.size) if a.size > 1 else 0.0


def _difference(results: Mapping, per_task: Mapping, hi: str, lo: str, metric: str) -> dict[str, float] | None:
    """Across-task mean of row ``hi`` minus row ``lo`` on ``metric`` and its standard error over adapters.

    Over the held-out tasks where both rows have the metric; each task's two row means are independent
    (different adapters), so the difference's variance is the sum of both means' squared standard errors,
    and the across-task mean divides the summed variances by the squared task count.
    """
    key = {"accuracy": "accuracies", "delta_cosine": "delta_cosines"}[metric]
    tasks = [t for t, r in per_task.items() if all(r.get(x, {}).get(metric) is not None for x in (hi, lo))]
    if not tasks:
        return None
    rows = [results["tasks"][t]["rows"] for t in tasks]
    var = sum(_var_of_mean(r[hi][key]) + _var_of_mean(r[lo][key]) for r in rows)
    means = {x: float(np.mean([per_task[t][x][metric] for t in tasks])) for x in (hi, lo)}
    return {**means, "diff": means[hi] - means[lo], "se": math.sqrt(var) / len(tasks)}


def _beyond_noise(d: Mapping[str, float]) -> bool:
    return d["diff"] > NOISE_SE * d["se"] and d["diff"] > 0


def _diff_text(d: Mapping[str, float], scale: float, spec: str) -> str:
    verdict = "" if _beyond_noise(d) else f", within {NOISE_SE:g} standard errors"
    return f"difference {d['diff'] * scale:+{spec}} ± {d['se'] * scale:{spec}} (s.e.){verdict}"


def _not_measured(rows: Sequence[str], metric: str) -> str:
    return f"not measured (needs {metric} of rows {', '.join(rows)} on a common held-out task)"


def _targets(results: Mapping, per_task: Mapping) -> dict[str, dict[str, Any]]:
    """Each target's verdict (True/False/None) and a one-line detail with the numbers behind it.

    The comparisons (a) and (d) hold only beyond noise: the mean difference must exceed ``NOISE_SE`` standard
    errors, estimated from the spread over adapters (seeds × generated adapters) on each task.
    """
    t: dict[str, dict[str, Any]] = {}
    acc = _difference(results, per_task, "delta", "weight_only", "accuracy")
    cos = _difference(results, per_task, "delta", "weight_only", "delta_cosine")
    if acc is None or cos is None:
        t["delta_beats_weight_only"] = {"ok": None, "detail": _not_measured(["delta", "weight_only"], "accuracy and Δ-cosine")}
    else:
        t["delta_beats_weight_only"] = {
            "ok": _beyond_noise(acc) and _beyond_noise(cos),
            "detail": f"accuracy {acc['delta'] * 100:.1f} vs {acc['weight_only'] * 100:.1f} ({_diff_text(acc, 100, '.1f')}), "
                      f"Δ-cosine {cos['delta']:.3f} vs {cos['weight_only']:.3f} ({_diff_text(cos, 1, '.3f')})"}
    m = _paired(per_task, ["base", "delta", "oracle"], "accuracy")
    rec = None if m is None else _recovered(m["delta"], m["base"], m["oracle"])
    if m is None:
        t["recovers_oracle_gain"] = {"ok": None, "detail": _not_measured(["base", "delta", "oracle"], "accuracy")}
    elif rec is None:
        t["recovers_oracle_gain"] = {"ok": None, "detail": f"not measured (oracle {m['oracle'] * 100:.1f} does not beat "
                                                           f"base {m['base'] * 100:.1f})"}
    else:
        t["recovers_oracle_gain"] = {"ok": rec >= RECOVERY_TARGET, "value": rec,
                                     "detail": f"{rec * 100:.1f} % (base {m['base'] * 100:.1f}, Δ-augmented "
                                               f"{m['delta'] * 100:.1f}, oracle {m['oracle'] * 100:.1f})"}
    c = _paired(per_task, ["delta"], "delta_cosine")
    t["delta_cosine_to_oracle"] = ({"ok": None, "detail": _not_measured(["delta"], "Δ-cosine")} if c is None else
                                   {"ok": c["delta"] >= COSINE_TARGET, "detail": f"{c['delta']:.3f}"})
    r = _difference(results, per_task, "delta", "delta_random_condition", "accuracy")
    t["random_conditions_hurt"] = (
        {"ok": None, "detail": _not_measured(["delta", "delta_random_condition"], "accuracy")} if r is None else
        {"ok": _beyond_noise(r),
         "detail": f"random conditions {r['delta_random_condition'] * 100:.1f} vs {r['delta'] * 100:.1f} "
                   f"(Δ-augmented minus random: {_diff_text(r, 100, '.1f')})"})
    return t


def summarize(results: Mapping) -> dict[str, Any]:
    """Per-row across-held-out-task means (accuracy, delta_cosine, n_tasks) and the four target booleans (None = not measurable)."""
    _validate(results)
    per_task = _task_means(results)
    rows = {}
    for row in _row_order(results):
        accs = [v[row]["accuracy"] for v in per_task.values() if v.get(row, {}).get("accuracy") is not None]
        coss = [v[row]["delta_cosine"] for v in per_task.values() if v.get(row, {}).get("delta_cosine") is not None]
        scos = [v[row]["delta_cosine_specific"] for v in per_task.values() if v.get(row, {}).get("delta_cosine_specific") is not None]
        rows[row] = {"accuracy": _mean(accs), "delta_cosine": _mean(coss), "delta_cosine_specific": _mean(scos), "n_tasks": len(accs)}
    details = _targets(results, per_task)
    return {"heldout_tasks": list(per_task), "rows": rows,
            "targets": {k: v["ok"] for k, v in details.items()}, "target_details": details}


def _figure(ncols: int = 1, width: float = 6.0):
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(width * ncols, 4.0))
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _accuracy_png(results: Mapping, labels: Mapping[str, str], path: Path) -> str | None:
    """Grouped bars (task × row, error bar = std); returns a skip reason or None when written."""
    tasks, order = _heldout(results), _row_order(results)
    stats = {(t, r): _mean_std((results["tasks"][t].get("rows") or {}).get(r, {}).get("accuracies"))
             for t in tasks for r in order}
    if all(s is None for s in stats.values()):
        return "no held-out task has accuracies"
    fig, (ax,) = _figure(width=max(6.0, 1.6 * len(tasks) + 3))
    width = 0.8 / len(order)
    for i, row in enumerate(order):
        xs = [j - 0.4 + (i + 0.5) * width for j, t in enumerate(tasks) if stats[t, row] is not None]
        ms = [stats[t, row][0] * 100 for t in tasks if stats[t, row] is not None]
        sd = [stats[t, row][1] * 100 for t in tasks if stats[t, row] is not None]
        ax.bar(xs, ms, width, yerr=sd, capsize=2, label=labels.get(row, row), color=f"C{i % 10}")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("held-out accuracy (mean ± std over adapters)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(3, len(order)))
    _save(fig, path)
    return None


def _curves_png(logs: Mapping[str, LogCurves], panels: Sequence[tuple[str, str, bool]], path: Path) -> str | None:
    """One panel per (log key, y label, log scale), one line per log; a skip reason when no panel has data."""
    if not logs:
        return "no training logs given"
    data = [{name: series(c, key) for name, c in logs.items()} for key, _, _ in panels]
    if not any(xs for panel in data for xs, _ in panel.values()):
        return f"the logs record no {' or '.join(k for k, _, _ in panels)} values"
    fig, axes = _figure(len(panels))
    for ax, (key, ylabel, logy), lines in zip(axes, panels, data):
        for name, (xs, ys) in lines.items():
            if xs:
                ax.plot(xs, ys, label=name, marker="." if len(xs) < 30 else None)
        if not any(xs for xs, _ in lines.values()):
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.set_yscale("log" if logy else "linear")
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
    _save(fig, path)
    return None


def _tsne_input(tsne: Mapping[str, Any]) -> tuple[np.ndarray, list[str]]:
    """(points [N, D], N labels) from the ``tsne`` argument, or a ConfigError naming what does not fit."""
    points, labels = np.asarray(tsne.get("points"), dtype=np.float64), [str(x) for x in tsne.get("labels") or []]
    if points.ndim != 2 or len(labels) != len(points):
        raise ConfigError(f"tsne needs 'points' [N, D] and N 'labels'; got points {points.shape} and {len(labels)} labels")
    return points, labels


def _tsne_png(points: np.ndarray, labels: list[str], path: Path) -> str | None:
    """t-SNE of Δ vectors via :func:`deltalora.deltas.analyze.tsne_png`; a skip reason when it cannot be drawn."""
    if len(points) < 4:
        return f"only {len(points)} points; t-SNE needs at least 4"
    from .deltas.analyze import tsne_png

    return None if tsne_png({"Δ (delta activations)": points}, labels, path) else "t-SNE needs scikit-learn and matplotlib"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _task_section(task: str, entry: Mapping, order: Sequence[str], labels: Mapping[str, str]) -> list[str]:
    rows = entry.get("rows") or {}
    base, oracle = (_mean(rows.get(r, {}).get("accuracies")) for r in ("base", "oracle"))
    body = []
    for row in order:
        r = rows.get(row) or {}
        accs = r.get("accuracies") or []
        m = _mean(accs)
        gain = None if m is None or base is None else (m - base) * 100
        rec = _recovered(m, base, oracle)
        body.append([labels.get(row, row), _pm(accs, 100, 1), str(len(accs)) if accs else DASH, _fmt(gain, "+.1f"),
                     _fmt(None if rec is None else rec * 100, ".1f"), _pm(r.get("delta_cosines"), 1, 3),
                     _pm(r.get("delta_cosines_specific"), 1, 3)])
    kind = ", ".join(x for x in (entry.get("kind"), entry.get("n_items") and f"{entry['n_items']} items") if x)
    return [f"### {task}" + (f" ({kind})" if kind else ""), ""] + _table(
        ["row", "accuracy (%)", "n adapters", "gain over base (pts)", "% of oracle gain", "Δ-cosine to oracle",
         "task-specific Δ-cosine"], body)


def _timing_table(call: Mapping[str, float], all_calls: Mapping[str, Any] | None) -> list[str]:
    """Seconds per stage of the call that wrote the report and, for a run resumed over several calls, summed over all."""
    total = lambda d: f"**{sum(float(v) for v in d.values()):.1f}**"  # noqa: E731
    if not all_calls or int(all_calls.get("calls", 1)) <= 1:
        if not call:
            return ["Not recorded.", ""]
        return _table(["stage", "seconds"], [[k, f"{float(v):.1f}"] for k, v in call.items()] + [["**total**", total(call)]])
    stages = all_calls.get("stages") or {}
    names = list(stages) + [k for k in call if k not in stages]
    n = int(all_calls["calls"])
    return ([f"Resumed: {n} calls wrote into this run directory. A stage that a kill cut short is not counted.", ""]
            + _table(["stage", "this call (s)", f"all {n} calls (s)"],
                     [[k, _fmt(call.get(k), ".1f"), _fmt(stages.get(k), ".1f")] for k in names]
                     + [["**total**", total(call), total(stages)]]))


def _render(results: Mapping, summary: Mapping, figures: Mapping[str, str | None]) -> str:
    labels, order = results.get("row_labels") or {}, _row_order(results)

    def listing(key: str) -> str:
        names = results.get(key) or []
        return f"({len(names)}): " + (", ".join(names) or DASH)

    out = [f"# {results.get('title') or 'deltalora held-out experiment'}", ""]
    if results.get("command"):
        out += ["Reproduce:", "", "```", str(results["command"]), "```", ""]
    machine = results.get("machine")  # absent in runs written before it was recorded: their report is unchanged
    out += [f"- Backbone: `{results.get('backbone') or DASH}`"]
    if isinstance(machine, Mapping):
        out += [f"- Machine: {machine.get('description') or DASH}; teachers trained in {machine.get('teacher_precision') or DASH}"]
    out += [f"- Training tasks {listing('train_tasks')}", f"- Held-out tasks {listing('heldout_tasks')}", "",
            "Accuracy is in points (mean ± population std over the evaluated adapters); gain and % of oracle gain "
            "use the row's mean; Δ-cosine is each adapter's Δ against the held-out task's own teacher; the task-specific "
            "Δ-cosine first projects the training teachers' mean Δ (the shift every fine-tune shares) out of both.", "",
            "## Held-out tasks", ""]
    for task in summary["heldout_tasks"]:
        out += _task_section(task, results["tasks"][task], order, labels)
    missing = [t for t in results.get("heldout_tasks") or [] if t not in results["tasks"]]
    if missing or not summary["heldout_tasks"]:
        out += [f"No results for held-out tasks: {', '.join(missing) or 'any'}.", ""]
    out += ["## Summary over held-out tasks", ""] + _table(
        ["row", "mean accuracy (%)", "mean Δ-cosine", "mean task-specific Δ-cosine", "tasks"],
        [[labels.get(r, r), _fmt(None if s["accuracy"] is None else s["accuracy"] * 100, ".1f"), _fmt(s["delta_cosine"], ".3f"),
          _fmt(s.get("delta_cosine_specific"), ".3f"), str(s["n_tasks"])] for r, s in summary["rows"].items()])
    out += ["## Targets", "",
            f"(a) and (d) hold only when the difference exceeds {NOISE_SE:g} standard errors of the mean over adapters "
            "(seeds × generated adapters per task). Every row is scored on the same eval items, so item sampling is "
            "not part of that error: a difference that passes is real for these items, not necessarily for the task.", ""]
    for key, (letter, text) in TARGETS.items():
        d = summary["target_details"][key]
        mark = {True: "✅", False: "❌", None: "➖"}[d["ok"]]
        out.append(f"- {mark} **({letter})** {text}: {d['detail']}")
    out += ["", "## Timing", ""] + _timing_table(results.get("timing") or {}, results.get("timing_all_calls"))
    if results.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    out += ["## Figures", ""]
    for name, reason in figures.items():
        out += [f"![{name}](figures/{name}.png)" if reason is None else f"_{name}.png skipped: {reason}._", ""]
    return "\n".join(out)


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    raise TypeError(f"results holds a {type(x).__name__}, which JSON cannot store")


TSNE_INPUT = "tsne_input.npz"  # the t-SNE's points and labels, kept so the report can be re-rendered


def write_report(out_dir: str | Path, results: dict, logs: Mapping[str, str | Path] | None = None,
                 tsne: Mapping[str, Any] | None = None, keep: Sequence[str] = ()) -> Path:
    """Writes out_dir/results.json, out_dir/report.md and out_dir/figures/*.png; returns the report path.

    A figure whose input is absent is skipped and its stale PNG removed, unless its name is in ``keep``
    and the PNG exists (a re-render that lacks the input keeps the figure the run drew).
    """
    summary = summarize(results)
    curves = {name: read_log(p) for name, p in (logs or {}).items()}  # bad inputs fail before anything is written
    points = None if tsne is None else _tsne_input(tsne)
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    atomic_write_bytes(out_dir / "results.json", json.dumps(results, indent=2, default=_jsonable).encode())
    if points is not None:
        buf = io.BytesIO()
        np.savez(buf, points=points[0], labels=np.asarray(points[1], dtype=str))
        atomic_write_bytes(out_dir / TSNE_INPUT, buf.getvalue())
    figures = {
        "accuracy": _accuracy_png(results, results.get("row_labels") or {}, fig_dir / "accuracy.png"),
        "loss": _curves_png(curves, [("loss_weights", "L_weights", True), ("loss_delta", "L_Δ", False)],
                            fig_dir / "loss.png"),
        "delta_cosine": _curves_png(curves, [("delta_cosine", "Δ-cosine to teacher", False)], fig_dir / "delta_cosine.png"),
        "tsne": "no t-SNE input given" if points is None else _tsne_png(*points, fig_dir / "tsne.png"),
    }
    for name, reason in figures.items():
        if reason is not None:
            if name in keep and (fig_dir / f"{name}.png").is_file():
                figures[name] = None
            else:
                (fig_dir / f"{name}.png").unlink(missing_ok=True)  # a stale figure from an earlier run would mislead
    report = out_dir / "report.md"
    atomic_write_bytes(report, _render(results, summary, figures).encode())
    return report


def rerender(out_dir: str | Path) -> Path:
    """Re-render a finished run's report.md and figures from its results.json, generator logs and t-SNE input.

    Nothing is recomputed, so the report keeps the timing and notes of the call that wrote results.json; a
    run written before the t-SNE input was saved keeps its tsne.png.
    """
    out_dir = Path(out_dir)
    path = out_dir / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no results.json; run `deltalora run` into {out_dir} first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); rerun `deltalora run` into {out_dir} to rewrite it") from None
    logs = {f"{p.parent.parent.name} seed {p.parent.name.removeprefix('seed')}": p
            for p in sorted(out_dir.glob("generators/*/seed*/log.jsonl"))}
    tsne = None
    if (out_dir / TSNE_INPUT).is_file():
        with np.load(out_dir / TSNE_INPUT, allow_pickle=False) as z:
            tsne = {"points": z["points"], "labels": [str(x) for x in z["labels"]]}
    return write_report(out_dir, results, logs=logs, tsne=tsne, keep=("tsne",))


__all__ = ["rerender", "summarize", "write_report"]
