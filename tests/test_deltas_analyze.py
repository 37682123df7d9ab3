"""Clustering report: silhouette by family of Δ vs flattened adapter weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deltalora.config import LoraSpec
from deltalora.deltas.analyze import clustering_report, cosine_distances, flattened_weights, silhouette
from deltalora.errors import DeltaLoraError
from deltalora.lora import LoraWeights, derive_layout, save_adapter
from deltalora.zoo import ZooEntry, append_entry, file_sha256


def test_silhouette_matches_definition():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    d = cosine_distances(x)
    assert np.allclose(np.diag(d), 0) and np.allclose(d, d.T)
    s = silhouette(d, ["a", "a", "b", "b"])
    assert 0.9 < s <= 1.0
    assert silhouette(d, ["a", "b", "a", "b"]) < 0
    # hand-computed for one point of a 3-point set
    d3 = np.array([[0, 1, 4], [1, 0, 2], [4, 2, 0]], dtype=float)
    expected = np.mean([(4 - 1) / 4, (2 - 1) / 2, 0.0])  # the singleton scores 0
    assert silhouette(d3, ["a", "a", "b"]) == pytest.approx(expected)
    with pytest.raises(DeltaLoraError, match="needs 2..n-1 families"):
        silhouette(d, ["a"] * 4)


def test_sklearn_agrees_when_installed():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    labels = ["a", "b", "c"] * 4
    d = cosine_distances(x)
    assert silhouette(d, labels) == pytest.approx(sk.silhouette_score(d, labels, metric="precomputed"), abs=1e-12)


def _zoo(backbone, root):
    lay = derive_layout(backbone.arch, LoraSpec(rank=2, alpha=4, targets="q,v"))
    fams = []
    for f, seed in (("x", 1), ("y", 2)):
        centre = LoraWeights.random(lay, std=0.2, seed=seed)
        for i in range(3):
            noise = LoraWeights.random(lay, std=0.02, seed=100 * seed + i)
            w = LoraWeights(
                lay, {k: centre.A[k] + noise.A[k] for k in centre.A}, {k: centre.B[k] + noise.B[k] for k in centre.B}
            )
            rel = f"{f}/{i}"
            save_adapter(w, root / rel)
            append_entry(
                root,
                ZooEntry(
                    id=rel, task=f, family=f, path=rel, sha256=file_sha256(root / rel / "adapter_model.safetensors")
                ),
            )
            fams.append(f)
    return fams


def test_clustering_report_and_cli(tiny_qwen2, tmp_path, deltalora_home):
    fams = _zoo(tiny_qwen2, tmp_path / "zoo")
    dirs = [tmp_path / "zoo" / f"{f}/{i}" for f in ("x", "y") for i in range(3)]
    flat = flattened_weights(dirs, tiny_qwen2.arch)
    assert flat.shape == (6, 2 * (2 * (64 + 64) + 2 * (64 + 32)))  # 2 layers × (q: r·(in+out) + v: r·(in+out))
    np.testing.assert_allclose(cosine_distances(flat, chunk=7), cosine_distances(flat), atol=1e-6)  # chunked Gram
    rep = clustering_report(flat, fams, dirs, tiny_qwen2.arch)
    assert rep["silhouette_delta"] == pytest.approx(rep["silhouette_weights"]) and rep["silhouette_weights"] > 0.5

    import typer
    from typer.testing import CliRunner

    from deltalora.cli.deltas import app

    root = typer.Typer()
    root.add_typer(app, name="deltas")
    r = CliRunner().invoke(
        root,
        [
            "deltas",
            "analyze",
            "--backbone",
            "tiny-qwen2",
            "--zoo",
            str(tmp_path / "zoo"),
            "--out",
            str(tmp_path / "tsne.png"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["adapters"] == 6 and out["families"] == {"x": 3, "y": 3}
    assert -1 <= out["silhouette_delta"] <= 1 and -1 <= out["silhouette_weights"] <= 1
    assert out["tsne_png"] and (tmp_path / "tsne.png").stat().st_size > 1000
    assert "note" in out["by_task"]  # one training run per task: nothing to compare across runs


def test_task_specific_subspace_and_by_task_silhouette():
    rng = np.random.default_rng(0)
    shared = np.zeros(16)
    shared[0] = 100.0  # the direction every fine-tune shares dominates each Δ
    centres = {t: rng.normal(size=16) * np.r_[0.0, np.ones(15)] for t in ("a", "b", "c", "d")}
    fam = {"a": "f", "b": "f", "c": "g", "d": "g"}
    rows, runs = [], []
    for t, c in centres.items():
        for seed in range(2):
            for step in (10, 20):
                noise = 0.3 if step == 20 else 3.0  # early checkpoints are noisy; only the last one per run counts
                rows.append(
                    shared * (1 + 0.1 * rng.normal()) + c + noise * rng.normal(size=16) * np.r_[0.0, np.ones(15)]
                )
                runs.append((t, f"{t}/s{seed}", step))
    x = np.stack(rows)
    fams = [fam[t] for t, _, _ in runs]
    rep = clustering_report(x, fams, runs=runs)
    # the shared direction hides task structure from a plain cosine; projecting it out reveals it
    assert rep["silhouette_delta_specific"] > rep["silhouette_delta"] + 0.1
    bt = rep["by_task"]
    assert bt["adapters"] == 8 and bt["tasks"] == 4
    last = [i for i, (_, _, step) in enumerate(runs) if step == 20]
    tasks = [runs[i][0] for i in last]
    assert bt["silhouette_delta"] == pytest.approx(silhouette(cosine_distances(x[last]), tasks))
    assert bt["silhouette_delta_specific"] > 0.5
    with pytest.raises(DeltaLoraError, match="runs has 3 entries"):
        clustering_report(x, fams, runs=runs[:3])
