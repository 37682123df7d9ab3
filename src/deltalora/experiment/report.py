"""The held-out experiment's report on disk: ``results.json``, ``report.md`` and ``figures/*.png``.

:func:`write_report` writes all three from a results dict (:mod:`.stats` computes, :mod:`.figures` draws,
:mod:`.markdown` lays out); :func:`rerender` does it again from what a finished run left on disk. A figure
whose input is absent is skipped with a one-line reason in the report; only a malformed ``results``
(:class:`ConfigError`) or a log path that does not exist (:class:`FileNotFoundError`) is an error.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..paths import atomic_write_bytes
from ..training.logs import read_log
from . import figures as fig
from .markdown import render
from .scaling_report import write_scaling_report
from .stats import summarize, target_config, validate

TSNE_INPUT = "tsne_input.npz"  # the t-SNE's points and labels, kept so the report can be re-rendered


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    raise TypeError(f"results holds a {type(x).__name__}, which JSON cannot store")


def write_report(
    out_dir: str | Path,
    results: dict,
    logs: Mapping[str, str | Path] | None = None,
    tsne: Mapping[str, Any] | None = None,
    keep: Sequence[str] = (),
) -> Path:
    """Writes out_dir/results.json, out_dir/report.md and out_dir/figures/*.png; returns the report path.

    The targets are the run's (``results["config"]["targets"]``, the defaults when it recorded none). A
    figure whose input is absent is skipped and its stale PNG removed, unless its name is in ``keep`` and the
    PNG exists (a re-render that lacks the input keeps the figure the run drew).
    """
    validate(results)
    targets = target_config(results)
    summary = summarize(results, targets)
    curves = {name: read_log(p) for name, p in (logs or {}).items()}  # bad inputs fail before anything is written
    points = None if tsne is None else fig.tsne_input(tsne)
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    atomic_write_bytes(out_dir / "results.json", json.dumps(results, indent=2, default=_jsonable).encode())
    if points is not None:
        buf = io.BytesIO()
        np.savez(buf, points=points[0], labels=np.asarray(points[1], dtype=str))
        atomic_write_bytes(out_dir / TSNE_INPUT, buf.getvalue())
    figures = {
        "accuracy": fig.accuracy_png(results, results.get("row_labels") or {}, fig_dir / "accuracy.png"),
        "loss": fig.curves_png(curves, fig.LOSS_PANELS, fig_dir / "loss.png"),
        "delta_cosine": fig.curves_png(curves, fig.DELTA_COSINE_PANELS, fig_dir / "delta_cosine.png"),
        "tsne": "no t-SNE input given" if points is None else fig.tsne_png(*points, fig_dir / "tsne.png"),
    }
    for name, reason in figures.items():
        if reason is not None:
            if name in keep and (fig_dir / f"{name}.png").is_file():
                figures[name] = None
            else:
                (fig_dir / f"{name}.png").unlink(missing_ok=True)  # a stale figure from an earlier run would mislead
    report = out_dir / "report.md"
    atomic_write_bytes(report, render(results, summary, figures, targets).encode())
    return report


def rerender(out_dir: str | Path) -> Path:
    """Re-render a finished run's report.md and figures from its results.json, generator logs and t-SNE input
    (a ``deltalora scale`` study's scaling.md and curve from its results.json alone).

    Nothing is recomputed, so the report keeps the timing and notes of the call that wrote results.json. A figure
    whose input is not on disk any more (training logs not kept, a run from before the t-SNE input was saved) keeps
    the PNG the run drew: a re-render never loses a figure.
    """
    out_dir = Path(out_dir)
    path = out_dir / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no results.json; run `deltalora run` (or `deltalora scale`) into {out_dir} first"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: not valid JSON ({exc}); rerun `deltalora run` (or `deltalora scale`) into {out_dir} to rewrite it"
        ) from None
    if "finished_folds" in results:  # a `deltalora scale` study: its report needs nothing but results.json
        return write_scaling_report(out_dir, results, save_results=False)  # leaves its input as it was
    logs = {
        f"{p.parent.parent.name} seed {p.parent.name.removeprefix('seed')}": p
        for p in sorted(out_dir.glob("generators/*/seed*/log.jsonl"))
    }
    tsne = None
    if (out_dir / TSNE_INPUT).is_file():
        with np.load(out_dir / TSNE_INPUT, allow_pickle=False) as z:
            tsne = {"points": z["points"], "labels": [str(x) for x in z["labels"]]}
    return write_report(out_dir, results, logs=logs, tsne=tsne, keep=("loss", "delta_cosine", "tsne"))


__all__ = ["TSNE_INPUT", "rerender", "write_report"]
