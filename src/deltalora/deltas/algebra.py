"""Δ algebra of compositionality: is a mixed teacher's Δ the sum of its components' Δ?

A mixed teacher is a LoRA trained on the union of two tasks' train data (``entry.tasks`` names the two). Delta
Activations reports that deltas are roughly additive, Δ_mix ≈ Δ₁ + Δ₂. To first order in the adapter this holds for
the *weights*' sum (v is smooth in ΔW, so v(B + ΔW₁ + ΔW₂) − v(B) = Δ(ΔW₁) + Δ(ΔW₂) + O(‖ΔW‖²)); whether a teacher
trained on the union lands near that sum is the empirical question. :func:`pair_algebra` measures one mixed Δ against
the candidate references (the sum, the mean, either component alone) and the best scalar fit αΔ₁ + βΔ₂;
:func:`zoo_algebra` pairs every mixed teacher of a zoo with its components' teachers of the same seed;
:func:`summarize_pairs` aggregates over seeds and :func:`algebra_figure` draws the seed criterion.

    ids, matrix = report.load()
    deltas = dict(zip(ids, matrix))
    entries = read_manifest("zoo/")
    records = zoo_algebra(entries, deltas, shared=single_task_mean(entries, deltas))
    summary = summarize_pairs(records)

All three Δ of a comparison must come from one probe set and representation (with per-task probes a mixed teacher
and its components are probed on different prompts, and the comparison means nothing).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DeltaLoraError
from ..zoo.manifest import ZooEntry
from .analyze import remove_shared

REFERENCES = ("sum", "mean", "first", "second")  # the vectors Δ_mix is compared against, in report order


class AlgebraError(DeltaLoraError):
    """Vectors that cannot be compared (wrong shapes, a zero mixed Δ)."""


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    """Cosine similarity; 0 when either vector is zero (as :func:`~.analyze.cosine_distances` treats a zero row)."""
    nx, ny = float(x.norm()), float(y.norm())
    return 0.0 if nx == 0 or ny == 0 else float(x @ y) / (nx * ny)


def _block(mix: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor) -> dict:
    norm = float(mix.norm())
    if norm == 0:
        raise AlgebraError("the mixed Δ is zero (after projecting out the shared direction, if given); nothing to fit")
    refs = {"sum": d1 + d2, "mean": (d1 + d2) / 2, "first": d1, "second": d2}
    out = {name: {"cos": _cos(mix, x), "rel_l2": float((x - mix).norm()) / norm} for name, x in refs.items()}
    out["closer_to_sum"] = out["sum"]["cos"] > max(out["first"]["cos"], out["second"]["cos"])
    basis = torch.stack([d1, d2], dim=1).numpy()
    (alpha, beta), *_ = np.linalg.lstsq(basis, mix.numpy(), rcond=None)  # minimum-norm when Δ₁ ∥ Δ₂
    fitted = torch.from_numpy(basis @ np.array([alpha, beta]))
    out["fit"] = {
        "alpha": float(alpha),
        "beta": float(beta),
        "rel_l2": float((fitted - mix).norm()) / norm,
        "cos": _cos(mix, fitted),
    }
    out["norms"] = {"mix": norm, "first": float(d1.norm()), "second": float(d2.norm())}
    out["cos_first_second"] = _cos(d1, d2)
    return out


def pair_algebra(
    delta_mix: torch.Tensor, delta_1: torch.Tensor, delta_2: torch.Tensor, shared: torch.Tensor | None = None
) -> dict:
    """Δ_mix against Δ₁ + Δ₂, (Δ₁ + Δ₂)/2, Δ₁ and Δ₂ (1-D tensors of one dimension; computed in float64).

    Returns, per reference ``sum`` / ``mean`` / ``first`` / ``second``, ``{"cos": cos(Δ_mix, x), "rel_l2":
    ‖x − Δ_mix‖ / ‖Δ_mix‖}``; ``closer_to_sum``: cos(Δ_mix, Δ₁+Δ₂) > max(cos(Δ_mix, Δ₁), cos(Δ_mix, Δ₂)) (the seed
    criterion); ``fit``: the least-squares ``alpha``, ``beta`` of Δ_mix ≈ αΔ₁ + βΔ₂ with the fit's ``rel_l2`` and
    ``cos``; ``norms`` of the three vectors and ``cos_first_second``. With ``shared`` (the direction every fine-tune
    shares, e.g. :func:`single_task_mean`), the same numbers with it projected out of all three vectors
    (:func:`~.analyze.remove_shared`) under ``specific``.
    """
    vecs = [torch.as_tensor(v).detach().to("cpu", torch.float64) for v in (delta_mix, delta_1, delta_2)]
    if any(v.dim() != 1 for v in vecs) or len({v.shape[0] for v in vecs}) != 1:
        shapes = [tuple(v.shape) for v in vecs]
        raise AlgebraError(f"pair_algebra needs three 1-D Δ of one dimension; got shapes {shapes}")
    if not all(bool(torch.isfinite(v).all()) for v in vecs):
        raise AlgebraError("a Δ has non-finite values; recompute it")
    out = _block(*vecs)
    if shared is not None:
        u = torch.as_tensor(shared).detach().to("cpu", torch.float64)
        if tuple(u.shape) != tuple(vecs[0].shape):
            raise AlgebraError(f"shared direction of shape {tuple(u.shape)} for Δ of shape {tuple(vecs[0].shape)}")
        if float(u.norm()) == 0:
            raise AlgebraError("the shared direction is zero; pass the mean Δ of the single-task teachers")
        out["specific"] = _block(*(remove_shared(v, u) for v in vecs))
    return out


def single_task_mean(entries: Sequence[ZooEntry], deltas: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The mean Δ of every single-task teacher in ``entries`` that has one in ``deltas`` (float32): the shift every
    fine-tune shares, to pass as ``shared``."""
    rows = [torch.as_tensor(deltas[e.id]).float() for e in entries if not e.mixed and e.id in deltas]
    if not rows:
        raise AlgebraError("no single-task teacher has a Δ; compute the zoo's Δ first (`deltalora deltas compute`)")
    return torch.stack(rows).mean(0)


def _component(
    entries: Sequence[ZooEntry], deltas: Mapping[str, torch.Tensor], task: str, seed: int, step: int
) -> tuple[ZooEntry | None, str]:
    """The single-task teacher of ``task`` matching ``seed`` and ``step`` (``"same_step"``), else that seed's last
    step with a Δ (``"last_step"``); ``(None, reason)`` when the seed has none."""
    runs = [e for e in entries if not e.mixed and e.task == task and e.seed == seed and e.id in deltas]
    same = [e for e in runs if e.step == step]
    if same:
        return same[0], "same_step"
    if runs:
        return max(runs, key=lambda e: e.step), "last_step"
    others = sorted({e.seed for e in entries if not e.mixed and e.task == task and e.id in deltas})
    return None, f"no teacher of component {task!r} at seed {seed} has a Δ" + (
        f" (seeds with one: {others})" if others else ""
    )


def zoo_algebra(
    entries: Sequence[ZooEntry], deltas: Mapping[str, torch.Tensor], shared: torch.Tensor | None = None
) -> list[dict]:
    """One record per mixed teacher of ``entries`` (manifest order), against its components' teachers.

    The components are the single-task teachers of ``entry.tasks`` with the mixed teacher's seed and step; when a
    component has no checkpoint at that step, that seed's last step stands in (``match`` says ``"last_step"``, and
    ``component_steps`` which). ``deltas`` maps adapter id → Δ (as ``dict(zip(*report.load()))``); ``shared`` adds the
    ``specific`` block (see :func:`pair_algebra`). A record has ``id``, ``pair`` (the mixed task), ``tasks``, ``seed``,
    ``step`` and ``status``: ``"ok"`` with ``components``, ``component_steps``, ``match`` and ``algebra`` (the
    :func:`pair_algebra` dict), or ``"skipped"`` with a ``reason`` (no Δ for the teacher or a component, not two
    components, degenerate vectors); a skipped teacher never stops the rest.
    """
    records = []
    for e in entries:
        if not e.mixed:
            continue
        rec = {"id": e.id, "pair": e.task, "tasks": list(e.tasks), "seed": e.seed, "step": e.step}
        if len(e.tasks) != 2:
            records.append({**rec, "status": "skipped", "reason": f"{len(e.tasks)} components; the algebra needs 2"})
            continue
        if e.id not in deltas:
            records.append({**rec, "status": "skipped", "reason": f"mixed teacher {e.id!r} has no Δ"})
            continue
        found = [_component(entries, deltas, t, e.seed, e.step) for t in e.tasks]
        missing = [why for c, why in found if c is None]
        if missing:
            records.append({**rec, "status": "skipped", "reason": "; ".join(missing)})
            continue
        (c1, m1), (c2, m2) = found
        try:
            algebra = pair_algebra(deltas[e.id], deltas[c1.id], deltas[c2.id], shared)
        except AlgebraError as exc:
            records.append({**rec, "status": "skipped", "reason": str(exc)})
            continue
        records.append(
            {
                **rec,
                "status": "ok",
                "components": [c1.id, c2.id],
                "component_steps": [c1.step, c2.step],
                "match": "same_step" if m1 == m2 == "same_step" else "last_step",
                "algebra": algebra,
            }
        )
    return records


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a :func:`pair_algebra` dict under dotted keys (``sum.cos``, ``specific.fit.alpha``)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = float(v)
    return out


def summarize_pairs(records: Sequence[dict]) -> dict:
    """Per pair, over its seeds: ``n`` usable records, ``seeds``, ``skipped``, ``closer_to_sum`` (and
    ``specific_closer_to_sum`` when present) as ``{"pass", "of"}``, and every number of the records' ``algebra`` as
    ``{"mean", "std"}`` under its dotted key (``"sum.cos"``, ``"fit.alpha"``, ``"specific.sum.rel_l2"``, ...); std
    is the sample standard deviation over seeds, 0 for one."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["pair"]].append(r)
    out = {}
    for pair in sorted(groups):
        ok = [r for r in groups[pair] if r["status"] == "ok"]
        entry = {
            "n": len(ok),
            "seeds": sorted({r["seed"] for r in ok}),
            "skipped": len(groups[pair]) - len(ok),
            "closer_to_sum": {"pass": sum(bool(r["algebra"]["closer_to_sum"]) for r in ok), "of": len(ok)},
        }
        specific = [r for r in ok if "specific" in r["algebra"]]
        if specific:
            entry["specific_closer_to_sum"] = {
                "pass": sum(bool(r["algebra"]["specific"]["closer_to_sum"]) for r in specific),
                "of": len(specific),
            }
        values: dict[str, list[float]] = defaultdict(list)
        for r in ok:
            for k, v in _numbers(r["algebra"]).items():
                values[k].append(v)
        entry["metrics"] = {
            k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
            for k, v in values.items()
        }
        out[pair] = entry
    return out


def algebra_figure(records: Sequence[dict], path: str | Path, specific: bool = False) -> Path | str:
    """Scatter of cos(Δ_mix, Δ₁+Δ₂) (x) against max cos(Δ_mix, Δᵢ) (y), one marker per usable mixed teacher, coloured
    by pair, with the diagonal: a marker below it passes the seed criterion. ``specific`` plots the shared-direction-
    removed numbers. Returns the written path, or a reason string when it is skipped (no matplotlib, nothing to plot).
    """
    rows = [r for r in records if r.get("status") == "ok" and (not specific or "specific" in r["algebra"])]
    if not rows:
        return "algebra figure skipped: no usable mixed teacher" + (" with a specific block" if specific else "")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "algebra figure skipped: install matplotlib"
    pairs = sorted({r["pair"] for r in rows})
    cmap = plt.get_cmap("tab10" if len(pairs) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(5, 5))
    xs, ys = [], []
    for j, pair in enumerate(pairs):
        blocks = [r["algebra"]["specific"] if specific else r["algebra"] for r in rows if r["pair"] == pair]
        x = [b["sum"]["cos"] for b in blocks]
        y = [max(b["first"]["cos"], b["second"]["cos"]) for b in blocks]
        ax.scatter(x, y, s=36, color=cmap(j % cmap.N), label=pair)
        xs += x
        ys += y
    lo = min(min(xs), min(ys))
    lo = -1.0 if lo < 0 else math.floor(lo * 10) / 10
    ax.plot([lo, 1.0], [lo, 1.0], color="grey", lw=1, ls="--", label="y = x")
    ax.set_xlim(lo, 1.02)
    ax.set_ylim(lo, 1.02)
    ax.set_xlabel("cos(Δ_mix, Δ₁ + Δ₂)")
    ax.set_ylabel("max cos(Δ_mix, Δᵢ)")
    head = "Δ algebra" + (" (shared direction removed)" if specific else "")
    ax.set_title(head + "\nbelow the line: closer to Δ₁ + Δ₂")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


__all__ = [
    "REFERENCES",
    "AlgebraError",
    "algebra_figure",
    "pair_algebra",
    "single_task_mean",
    "summarize_pairs",
    "zoo_algebra",
]
