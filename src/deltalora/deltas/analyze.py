"""Clustering report: do teacher Δ vectors group by task family, and do flattened adapter weights?

The Delta Activations table compares exactly these two: the silhouette score of Δ by family under
cosine distance, and the same score for the flattened LoRA weights (A and B of every slot
concatenated). The score is computed here in numpy (no extra dependency); the t-SNE picture needs
scikit-learn and matplotlib and is skipped, with a note, when they are not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..backbones.architecture import Architecture
from ..errors import DeltaLoraError
from ..lora import load_adapter


def remove_shared(x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """``x`` with its component along ``shared`` projected out (rows of a [K, dim] batch, or one vector).

    Every fine-tune on answer text moves the last hidden state along one common direction (the training
    teachers' mean Δ); what is left is the task-specific part of the shift. A projection, not a
    subtraction: a zero shift stays zero, so an adapter that does nothing cannot look task-like.
    """
    u = shared / shared.norm().clamp_min(1e-12)
    return x - (x @ u)[..., None] * u


def cosine_distances(x: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """1 − cosine similarity of the rows of ``x`` (a zero row is at distance 1 from everything).

    The Gram matrix accumulates in float64 over column chunks, so wide float32 rows (flattened weights: 3.7 GB
    for the default zoo) need no float64 copy: memory beyond ``x`` is N² + N·chunk.
    """
    n = x.shape[0]
    gram = np.zeros((n, n))
    for c in range(0, x.shape[1], chunk):
        block = np.asarray(x[:, c : c + chunk], dtype=np.float64)
        gram += block @ block.T
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    outer = np.outer(norms, norms)
    d = 1.0 - np.divide(gram, outer, out=np.zeros_like(gram), where=outer > 0)
    np.fill_diagonal(d, 0.0)
    return np.clip(d, 0.0, 2.0)


def silhouette(distances: np.ndarray, labels: Sequence[str]) -> float:
    """Mean silhouette over samples of a precomputed distance matrix (sklearn's convention: 0 for singletons)."""
    labels = np.asarray(labels)
    uniq = np.unique(labels)
    n = len(labels)
    if not 2 <= len(uniq) <= n - 1:
        raise DeltaLoraError(f"a silhouette score needs 2..n-1 families; got {len(uniq)} families over {n} adapters")
    masks = {u: labels == u for u in uniq}
    scores = np.zeros(n)
    for i in range(n):
        own = masks[labels[i]].copy()
        own[i] = False
        if not own.any():
            continue  # a singleton cluster scores 0
        a = distances[i, own].mean()
        b = min(distances[i, masks[u]].mean() for u in uniq if u != labels[i])
        denom = max(a, b)
        scores[i] = 0.0 if denom == 0 else (b - a) / denom
    return float(scores.mean())


def flattened_weights(adapter_dirs: Sequence[str | Path], arch: Architecture | None = None) -> np.ndarray:
    """[N, params] float32: every slot's A then B, flattened, in canonical slot order (one layout required).

    Filled in place, one adapter at a time: N × params × 4 bytes is the whole footprint (3.7 GB for the
    default zoo's 210 r8 all-7 adapters on the 0.5B), with no list of rows or float64 copy beside it.
    """
    flat, keys = None, None
    for n, d in enumerate(adapter_dirs):
        w = load_adapter(d, arch, dtype=torch.float32)
        k = [s.key for s in w.layout.slots], w.layout.spec.rank
        if keys is not None and k != keys:
            raise DeltaLoraError(
                f"{d}: its slots or rank differ from the first adapter's; flattened weights need one layout"
            )
        keys = k
        row = torch.cat([t.reshape(-1) for t in w.tensors()]).numpy()
        if flat is None:
            flat = np.empty((len(adapter_dirs), row.size), dtype=np.float32)
        flat[n] = row
    return flat if flat is not None else np.empty((0, 0), dtype=np.float32)


def tsne_png(
    points: dict[str, np.ndarray | tuple[str, np.ndarray]], labels: Sequence[str], out: Path, seed: int = 0
) -> Path | None:
    """Side-by-side t-SNE panels (cosine metric) of each named matrix, coloured by family; None without
    sklearn/matplotlib.

    A panel given as ``("precomputed", D)`` is an N×N cosine-distance matrix (wide inputs such as flattened
    weights are reduced to one before plotting)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    fams = sorted(set(labels))
    cmap = plt.get_cmap("tab10" if len(fams) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(points), figsize=(5 * len(points), 4.5), squeeze=False)
    for ax, (title, x) in zip(axes[0], points.items()):
        metric = "cosine"
        if isinstance(x, tuple):
            metric, x = x
        perplexity = max(2.0, min(30.0, (len(x) - 1) / 3))
        method = "exact" if len(x) <= 1000 else "barnes_hut"  # Barnes-Hut is far slower on small sets here
        tsne = TSNE(
            n_components=2, metric=metric, init="random", perplexity=perplexity, random_state=seed, method=method
        )
        xy = tsne.fit_transform(np.asarray(x, dtype=np.float32 if metric != "precomputed" else np.float64))
        for j, fam in enumerate(fams):
            sel = np.asarray(labels) == fam
            ax.scatter(xy[sel, 0], xy[sel, 1], s=30, color=cmap(j), label=fam)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _specific(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` with the component along their mean projected out (the shift every fine-tune shares)."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    return remove_shared(t, t.mean(0)).numpy()


def _by_task(deltas: np.ndarray, runs: Sequence[tuple[str, str, int]], weight_d: np.ndarray | None) -> dict:
    """Silhouette by *task* over one adapter per training run (its last checkpoint), on tasks with ≥ 2 runs.

    Checkpoints of one run are near-copies, so they would cluster by construction; distinct runs of a task
    (other seed, other data subset) clustering together is the evidence that Δ carries the task's identity.
    """
    last: dict[str, int] = {}
    for i, (_task, run, step) in enumerate(runs):
        if run not in last or step > runs[last[run]][2]:
            last[run] = i
    per_task: dict[str, list[int]] = {}
    for i in last.values():
        per_task.setdefault(runs[i][0], []).append(i)
    rows = sorted(i for idx in per_task.values() if len(idx) >= 2 for i in idx)
    tasks = [runs[i][0] for i in rows]
    if len(set(tasks)) < 2:
        return {"note": "needs ≥ 2 tasks with ≥ 2 training runs each (e.g. 2 seeds)", "runs": len(last)}
    out = {
        "adapters": len(rows),
        "tasks": len(set(tasks)),
        "silhouette_delta": silhouette(cosine_distances(deltas[rows]), tasks),
        "silhouette_delta_specific": silhouette(cosine_distances(_specific(deltas[rows])), tasks),
    }
    if weight_d is not None:
        out["silhouette_weights"] = silhouette(weight_d[np.ix_(rows, rows)], tasks)
    return out


def clustering_report(
    deltas: np.ndarray,
    families: Sequence[str],
    adapter_dirs: Sequence[str | Path] | None = None,
    arch: Architecture | None = None,
    png: Path | None = None,
    runs: Sequence[tuple[str, str, int]] | None = None,
) -> dict:
    """Silhouette (cosine) of Δ by family, and of flattened adapter weights when ``adapter_dirs`` are given.

    Also by family in the task-specific subspace (the mean Δ projected out of every row), and, when ``runs``
    gives each adapter's (task, training run, step), by task over the last checkpoint of each run.
    """
    deltas = np.asarray(deltas)
    out = {
        "adapters": len(families),
        "families": {f: int(sum(1 for x in families if x == f)) for f in sorted(set(families))},
    }
    out["silhouette_delta"] = silhouette(cosine_distances(deltas), families)
    out["silhouette_delta_specific"] = silhouette(cosine_distances(_specific(deltas)), families)
    panels = {"Δ (delta activations)": deltas}
    weight_d = None
    if adapter_dirs is not None:
        flat = flattened_weights(adapter_dirs, arch)
        weight_d = cosine_distances(flat)
        del flat  # only the N×N distances are needed from here on
        out["silhouette_weights"] = silhouette(weight_d, families)
        panels["flattened LoRA weights"] = ("precomputed", weight_d)
    if runs is not None:
        if len(runs) != len(families):
            raise DeltaLoraError(f"runs has {len(runs)} entries for {len(families)} adapters")
        out["by_task"] = _by_task(deltas, list(runs), weight_d)
    if png is not None:
        written = tsne_png(panels, families, Path(png))
        out["tsne_png"] = str(written) if written else None
        if written is None:
            out["note"] = "t-SNE skipped: install scikit-learn and matplotlib"
    return out


__all__ = ["clustering_report", "cosine_distances", "flattened_weights", "remove_shared", "silhouette", "tsne_png"]
