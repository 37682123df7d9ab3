"""The report's PNG figures: held-out accuracy bars, training-loss and Δ-cosine curves, a t-SNE of Δ vectors.

Each function draws one figure and returns None, or a one-line reason why it could not (the report prints
it in the figure's place). Figures are drawn on :class:`matplotlib.figure.Figure` objects, never through
pyplot: ``savefig`` to PNG renders with the Agg canvas whatever the process's backend is, so importing this
module selects no backend and leaves an interactive session's alone.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..deltas.analyze import tsne_png as draw_tsne
from ..errors import ConfigError
from ..paths import atomic_write_bytes
from ..training.logs import LogCurves, series
from .stats import heldout_tasks, mean_std, table_rows


def new_figure(ncols: int = 1, width: float = 6.0) -> tuple[Figure, Any]:
    """A figure of ``ncols`` axes side by side (no pyplot: see the module docstring)."""
    fig = Figure(figsize=(width * ncols, 4.0))
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def save_png(fig: Figure, path: Path) -> None:
    """Lay out and write ``fig`` to ``path`` as PNG, atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def accuracy_png(results: Mapping, labels: Mapping[str, str], path: Path) -> str | None:
    """Grouped bars (task × row, error bar = std); returns a skip reason or None when written."""
    tasks, order = heldout_tasks(results), table_rows(results)
    stats = {
        (t, r): mean_std((results["tasks"][t].get("rows") or {}).get(r, {}).get("accuracies"))
        for t in tasks
        for r in order
    }
    if all(s is None for s in stats.values()):
        return "no held-out task has accuracies"
    fig, (ax,) = new_figure(width=max(6.0, 1.6 * len(tasks) + 3))
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
    save_png(fig, path)
    return None


def curves_png(logs: Mapping[str, LogCurves], panels: Sequence[tuple[str, str, bool]], path: Path) -> str | None:
    """One panel per (log key, y label, log scale), one line per log; a skip reason when no panel has data."""
    if not logs:
        return "no training logs given"
    data = [{name: series(c, key) for name, c in logs.items()} for key, _, _ in panels]
    if not any(xs for panel in data for xs, _ in panel.values()):
        return f"the logs record no {' or '.join(k for k, _, _ in panels)} values"
    fig, axes = new_figure(len(panels))
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
    save_png(fig, path)
    return None


LOSS_PANELS = [("loss_weights", "L_weights", True), ("loss_delta", "L_Δ", False)]
DELTA_COSINE_PANELS = [("delta_cosine", "Δ-cosine to teacher", False)]


def tsne_input(tsne: Mapping[str, Any]) -> tuple[np.ndarray, list[str]]:
    """(points [N, D], N labels) from a ``{"points", "labels"}`` mapping, or a ConfigError naming what does not fit."""
    points, labels = np.asarray(tsne.get("points"), dtype=np.float64), [str(x) for x in tsne.get("labels") or []]
    if points.ndim != 2 or len(labels) != len(points):
        raise ConfigError(
            f"tsne needs 'points' [N, D] and N 'labels'; got points {points.shape} and {len(labels)} labels"
        )
    return points, labels


def tsne_png(points: np.ndarray, labels: list[str], path: Path) -> str | None:
    """t-SNE of Δ vectors via :func:`deltalora.deltas.analyze.tsne_png`; a skip reason when it cannot be drawn."""
    if len(points) < 4:
        return f"only {len(points)} points; t-SNE needs at least 4"
    drawn = draw_tsne({"Δ (delta activations)": points}, labels, path)
    return None if drawn else "t-SNE needs scikit-learn and matplotlib"


__all__ = ["DELTA_COSINE_PANELS", "LOSS_PANELS", "accuracy_png", "curves_png", "tsne_input", "tsne_png"]
