"""The optional Ray Data backend gives the local backend's Δ, report and cache (needs ``deltalora[ray]``)."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from deltalora.config import LoraSpec
from deltalora.deltas import DeltaCache, DeltaError, compute_deltas, sources_from_adapters
from deltalora.lora import LoraWeights, derive_layout, save_adapter


@pytest.fixture(scope="module")
def ray_session():
    import ray  # in the `test` extra, so CI runs this instead of skipping it
    import ray.data  # noqa: F401

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20)
    try:
        yield ray
    finally:
        ray.shutdown()


def _zoo(backbone, root, n=6):
    layout = derive_layout(backbone.arch, LoraSpec(rank=4, alpha=8, targets="q,k,v,o,gate,up,down"))
    ws = LoraWeights.random(layout, num_adapters=n, std=0.1, seed=7)
    dirs = [save_adapter(ws.select(i), root / f"a{i}") for i in range(n)]
    bad = ws.select(0)
    bad.B["1.down_proj"] = bad.B["1.down_proj"].clone()
    bad.B["1.down_proj"][0, 0] = float("nan")  # found by the actor that loads it
    return dirs + [save_adapter(bad, root / "diverged"), root / "missing"]  # missing: found by the driver


def _comparable(report) -> list[dict]:
    return [dataclasses.asdict(r) for r in report.results]


def test_ray_equals_local_and_reruns_hit_the_cache(ray_session, tiny_qwen2, tmp_path):
    from deltalora.deltas.ray_backend import compute_deltas_ray

    sources = sources_from_adapters(_zoo(tiny_qwen2, tmp_path))
    with pytest.warns(UserWarning) as local_warnings:
        local = compute_deltas(tiny_qwen2, sources, cache=tmp_path / "local", batch_adapters=2)
    with pytest.warns(UserWarning) as ray_warnings:
        ray = compute_deltas_ray(tiny_qwen2, sources, cache=tmp_path / "ray", batch_adapters=2, num_actors=2)
    skipped = lambda rec: sorted(str(w.message).split(":")[0] for w in rec if str(w.message).startswith("skipping"))  # noqa: E731
    assert (
        skipped(ray_warnings)
        == skipped(local_warnings)
        == [f"skipping lora {tmp_path / n}" for n in ("diverged", "missing")]
    )
    assert ray.counts() == local.counts() == {"computed": 6, "cached": 0, "broken": 2}
    assert _comparable(ray) == _comparable(local)  # ids, status, keys, files, norms (bit-equal floats), errors
    assert ray.stats == local.stats
    ids, deltas = ray.load()
    local_ids, local_deltas = local.load()
    assert ids == local_ids and torch.equal(deltas, local_deltas)  # same K-groups on CPU fp32: bit-identical
    lines = lambda cache: sorted(json.dumps(r, sort_keys=True) for r in DeltaCache(cache).read_index())  # noqa: E731
    assert lines(tmp_path / "ray") == lines(tmp_path / "local")  # the same index records (written once, by the driver)

    again = compute_deltas_ray(tiny_qwen2, sources[:6], cache=tmp_path / "ray", batch_adapters=2, num_actors=2)
    assert again.counts() == {"computed": 0, "cached": 6, "broken": 0}
    assert len(DeltaCache(tmp_path / "ray").read_index()) == 6  # a rerun appends nothing
    # the local backend reads what the Ray backend wrote, and the reverse: one cache
    assert compute_deltas(tiny_qwen2, sources[:6], cache=tmp_path / "ray").counts()["cached"] == 6
    shard = compute_deltas_ray(tiny_qwen2, sources[:6], cache=tmp_path / "local", shard="1/2", num_actors=1)
    assert shard.counts() == {"computed": 0, "cached": 3, "broken": 0}


def test_cli_backend_ray(ray_session, tiny_qwen2, tmp_path, deltalora_home):
    import typer
    from typer.testing import CliRunner

    from deltalora.cli.deltas import app

    root = typer.Typer()
    root.add_typer(app, name="deltas")
    dirs = _zoo(tiny_qwen2, tmp_path, n=3)[:3]
    args = [
        "deltas",
        "compute",
        "--backbone",
        "tiny-qwen2",
        *[x for d in dirs for x in ("--adapter", str(d))],
        "--batch-adapters",
        "2",
        "--json",
    ]
    r = CliRunner().invoke(root, [*args, "--backend", "ray", "--ray-actors", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["counts"] == {"computed": 3, "cached": 0, "broken": 0} and out["cache_dir"] == str(
        deltalora_home / "deltas"
    )
    r = CliRunner().invoke(root, args)  # the local backend finds the Ray backend's Δ
    assert json.loads(r.stdout)["counts"] == {"computed": 0, "cached": 3, "broken": 0}
    r = CliRunner().invoke(root, [*args, "--backend", "spark"])
    assert r.exit_code == 2 and "--backend 'spark' is not one of local, ray" in r.output


def test_missing_ray_is_a_one_line_error(monkeypatch, tmp_path):
    from deltalora.deltas.ray_backend import compute_deltas_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    with pytest.raises(DeltaError, match=r"pip install 'deltalora\[ray\]'") as info:
        compute_deltas_ray(None, [], cache=tmp_path)
    assert "\n" not in str(info.value)

    import typer
    from typer.testing import CliRunner

    from deltalora.cli.deltas import app

    root = typer.Typer()
    root.add_typer(app, name="deltas")
    r = CliRunner().invoke(
        root, ["deltas", "compute", "--backbone", "tiny-qwen2", "--adapter", str(tmp_path), "--backend", "ray"]
    )
    assert r.exit_code == 2 and "pip install 'deltalora[ray]'" in r.output and len(r.output.strip().splitlines()) == 1
