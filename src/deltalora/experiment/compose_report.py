"""The compositionality study's report: ``results.json`` and ``compositionality.md`` with its figures.

Tables: the Δ algebra per probe set (one line per pair, mean ± std over the zoo seeds, the seed criterion "Δ_mix closer
to Δ₁ + Δ₂ than to either component" as passes of seeds), the accuracy of every row on each component task, and the
interference of every composed row with the seed criterion against the naive merge, per pair.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ..paths import atomic_write_bytes
from .figures import new_figure, save_png
from .markdown import DASH, fmt, table

REPORT = "compositionality.md"


def _pm(stats: Mapping | None, scale: float = 1.0, digits: int = 3) -> str:
    if not stats or stats.get("mean") is None:
        return DASH
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def _metric(summary: Mapping, key: str, scale: float = 1.0, digits: int = 3) -> str:
    return _pm(summary["metrics"].get(key), scale, digits)


def _passes(c: Mapping | None) -> str:
    return DASH if not c or not c.get("of") else f"{c['pass']}/{c['of']}"


def algebra_lines(name: str, result: Mapping, pairs: Mapping, figure) -> list[str]:
    summary = result["summary"]
    specific = any("specific.sum.cos" in s["metrics"] for s in summary.values())
    header = [
        "pair",
        "families",
        "cos(Δmix, Δ₁+Δ₂)",
        "cos(Δmix, Δ₁)",
        "cos(Δmix, Δ₂)",
        "rel L2 to sum",
        "rel L2 to mean",
    ]
    header += ["α", "β", "closer to sum"]
    if specific:
        header += ["specific cos to sum", "specific closer to sum"]
    body = []
    for pair, s in summary.items():
        fam = pairs.get(pair, {}).get("families") or []
        row = [
            pair,
            " + ".join(str(f) for f in fam) or DASH,
            _metric(s, "sum.cos"),
            _metric(s, "first.cos"),
            _metric(s, "second.cos"),
            _metric(s, "sum.rel_l2"),
            _metric(s, "mean.rel_l2"),
            _metric(s, "fit.alpha", digits=2),
            _metric(s, "fit.beta", digits=2),
            _passes(s["closer_to_sum"]),
        ]
        if specific:
            row += [_metric(s, "specific.sum.cos"), _passes(s.get("specific_closer_to_sum"))]
        body.append(row)
    total = sum(s["closer_to_sum"]["pass"] for s in summary.values())
    of = sum(s["closer_to_sum"]["of"] for s in summary.values())
    pass_pairs = sum(
        s["closer_to_sum"]["of"] > 0 and s["closer_to_sum"]["pass"] == s["closer_to_sum"]["of"]
        for s in summary.values()
    )
    lines = [
        f"### Probes `{name}` ({result['representation']})",
        "",
        "Mean ± std over the zoo seeds of each pair's mixed teacher (its components' teachers of the same seed and "
        "step). α, β: the least-squares fit Δmix ≈ αΔ₁ + βΔ₂. *Closer to sum*: seeds where cos(Δmix, Δ₁+Δ₂) > "
        "max cos(Δmix, Δᵢ) (the seed criterion).",
        "",
        *table(header, body),
        f"Seed criterion: {total}/{of} mixed teachers closer to Δ₁ + Δ₂ than to either component; {pass_pairs}/"
        f"{len(summary)} pairs pass on every seed.",
        "",
    ]
    skipped = [r for r in result["records"] if r.get("status") != "ok"]
    if skipped:
        lines += [f"Skipped: {len(skipped)} mixed teachers (first: {skipped[0]['id']}: {skipped[0]['reason']}).", ""]
    if isinstance(figure, (str, Path)) and Path(figure).suffix == ".png":
        lines += [f"![Δ algebra, {name}](figures/{Path(figure).name})", ""]
    elif figure:
        lines += [str(figure), ""]
    return lines


def accuracy_lines(results: Mapping) -> list[str]:
    order = results["rows"]
    header = ["pair", "task", *order]
    body = []
    for pair, p in results["pairs"].items():
        for task, t in p["eval"].items():
            cells = []
            for row in order:
                accs = t["rows"].get(row, {}).get("accuracies")
                if not accs:
                    cells.append(DASH)
                    continue
                mean = sum(accs) / len(accs)
                std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0.0
                cells.append(f"{100 * mean:.1f} ± {100 * std:.1f}")
            body.append([pair, f"{task} ({t['kind']}, {t['n_items']})", *cells])
    return table(header, body)


def interference_lines(results: Mapping) -> list[str]:
    order = [r for r in results["rows"] if r not in ("base", "own")]
    naive = next((r for r in order if r.startswith("merge_")), None)
    header = ["pair", *(f"{r} drop" for r in order), "mixed ≥ naive merge", "generated ≥ naive merge", "keeps < share"]
    body, passes = [], {"mixed": [0, 0], "generated": [0, 0]}
    for pair, p in results["pairs"].items():
        inter = p["interference"]
        cells = [pair]
        for r in order:
            cells.append(fmt(100 * inter[r]["mean_drop"], "+.1f") if r in inter else DASH)
        for r in ("mixed", "generated"):
            v = inter.get(r, {}).get("vs_naive_merge")
            if v is None:
                cells.append(DASH)
                continue
            passes[r][0] += bool(v["pass"])
            passes[r][1] += 1
            verdict = "pass" if v["pass"] else "FAIL"
            cells.append(f"{verdict} ({100 * v['row_mean_drop']:+.1f} vs {100 * v['merge_mean_drop']:+.1f})")
        bad = [r for r in order if inter.get(r, {}).get("catastrophic")]
        cells.append(", ".join(bad) or "none")
        body.append(cells)
    share = results["config"]["retained"]
    return [
        "Drop: the row's accuracy minus the component's own teachers' (points, mean over both component tasks; "
        f"negative = interference). The seed criterion compares each row with the naive merge (`{naive}`). *Keeps "
        f"< share*: rows that keep less than {share:g} of the own teachers' gain over base on a component task.",
        "",
        *table(header, body),
        f"Mixed teacher no worse than the naive merge: {passes['mixed'][0]}/{passes['mixed'][1]} pairs; generated "
        f"adapter: {passes['generated'][0]}/{passes['generated'][1]} pairs.",
        "",
    ]


def interference_figure(results: Mapping, path: Path):
    """Grouped bars: per pair, each composed row's mean drop against the own teachers."""
    order = [r for r in results["rows"] if r not in ("base", "own")]
    pairs = list(results["pairs"])
    if not pairs:
        return "interference figure skipped: no pair"
    fig, (ax,) = new_figure(width=max(6, 1.2 * len(pairs)))
    width = 0.8 / len(order)
    for j, row in enumerate(order):
        ys = [100 * results["pairs"][p]["interference"].get(row, {}).get("mean_drop", float("nan")) for p in pairs]
        ax.bar([i + j * width for i in range(len(pairs))], ys, width, label=row)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(pairs))], pairs, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("accuracy − own teacher (points)")
    ax.set_title("Interference on the component tasks")
    ax.legend(fontsize=7)
    save_png(fig, path)
    return path


def render(results: Mapping, algebra_figures: Mapping) -> str:
    cfg = results["config"]
    m = results.get("machine") or {}
    lines = [
        f"# {results['title']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Backbone {results['backbone']}; zoo `{results['zoo']}`; {len(results['pairs'])} pair"
        f"{'s' if len(results['pairs']) != 1 else ''} "
        f"({sum(p['cross_family'] for p in results['pairs'].values())} across families). Machine: "
        f"{m.get('description', DASH)}; teachers in {m.get('teacher_precision', DASH)}. Wall time of this call: "
        f"{results['wall_seconds']:.0f} s.",
        "",
        f"The generator ({cfg['train']['generator']}, {cfg['train']['steps']} steps, seeds {cfg['seeds']}) and the Δ "
        f"predictor trained on the {results['train_teachers']} single-task teachers; the {results['mixed_excluded']} "
        "mixed teachers never reached them. Teachers are each zoo seed's last checkpoint; "
        f"{cfg['eval']['limit'] or 'all'} eval items per component task.",
        "",
        "## Δ algebra",
        "",
    ]
    for name, result in results["algebra"].items():
        lines += algebra_lines(name, result, results["pairs"], algebra_figures.get(name))
    lines += ["## Composed adapters on the component tasks", "", "Accuracy (%), mean ± std over seeds:", ""]
    lines += [f"- `{r}`: {label}" for r, label in results["row_labels"].items()] + [""]
    lines += accuracy_lines(results)
    lines += ["## Interference", ""] + interference_lines(results)
    fig = results.get("interference_figure")
    if fig:
        lines += [f"![interference](figures/{Path(fig).name})", ""]
    return "\n".join(lines)


def write_compose_report(out: str | Path, results: dict, algebra_figures: Mapping) -> Path:
    """results.json and compositionality.md (with the interference figure) into ``out``; the report's path."""
    out = Path(out)
    fig = interference_figure(results, out / "figures" / "compose_interference.png")
    results = {**results, "interference_figure": str(fig) if isinstance(fig, Path) else None}
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=2).encode())
    path = out / REPORT
    atomic_write_bytes(path, render(results, algebra_figures).encode())
    return path


__all__ = ["REPORT", "render", "write_compose_report"]
