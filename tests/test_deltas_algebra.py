"""The Δ algebra of mixed teachers: exact values on synthetic vectors, the first-order additivity of Δ on a real tiny
model, and the pairing of a zoo's mixed teachers with their components."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from deltalora.config import LoraSpec
from deltalora.deltas import (
    AlgebraError,
    DeltaProbe,
    algebra_figure,
    pair_algebra,
    remove_shared,
    single_task_mean,
    summarize_pairs,
    zoo_algebra,
)
from deltalora.lora import LoraWeights, derive_layout
from deltalora.lora.merge import merge_adapters
from deltalora.zoo import read_manifest
from tests.helpers import manifest_entry

from .helpers import teacher_world

DIM = 16


def _e(i: int) -> torch.Tensor:
    v = torch.zeros(DIM)
    v[i] = 1.0
    return v


# ------------------------------------------------------------------------------------------ synthetic vectors


def test_exact_sum_is_recovered():
    d1, d2 = 2.0 * _e(0), 2.0 * _e(1)  # orthogonal, equal norms
    a = pair_algebra(d1 + d2, d1, d2)
    assert a["sum"]["cos"] == pytest.approx(1.0)
    assert a["sum"]["rel_l2"] == pytest.approx(0.0, abs=1e-12)
    assert a["closer_to_sum"] is True
    assert (a["fit"]["alpha"], a["fit"]["beta"]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert a["fit"]["rel_l2"] == pytest.approx(0.0, abs=1e-12)
    # the mean points the same way but is half as long: ‖(Δ₁+Δ₂)/2 − (Δ₁+Δ₂)‖ / ‖Δ₁+Δ₂‖ = 1/2
    assert a["mean"]["cos"] == pytest.approx(1.0)
    assert a["mean"]["rel_l2"] == pytest.approx(0.5)
    # either component alone: cos = 2²/(2·2√2) = 1/√2, and what is left over is the other component: 2/(2√2)
    for ref in ("first", "second"):
        assert a[ref]["cos"] == pytest.approx(1 / math.sqrt(2))
        assert a[ref]["rel_l2"] == pytest.approx(1 / math.sqrt(2))
    assert a["cos_first_second"] == pytest.approx(0.0)
    assert a["norms"] == {"mix": pytest.approx(2 * math.sqrt(2)), "first": 2.0, "second": 2.0}
    assert "specific" not in a


def test_a_component_alone_is_not_closer_to_the_sum():
    d1, d2 = _e(0), _e(1)
    a = pair_algebra(d1, d1, d2)
    assert a["first"]["cos"] == pytest.approx(1.0)
    assert a["first"]["rel_l2"] == pytest.approx(0.0)
    assert a["second"]["cos"] == pytest.approx(0.0)
    assert a["sum"]["cos"] == pytest.approx(1 / math.sqrt(2))
    assert a["closer_to_sum"] is False
    assert (a["fit"]["alpha"], a["fit"]["beta"]) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-12))


def test_each_number_is_computed_on_its_own_vectors():
    """Unequal components (3·e₀ and 4·e₁, Δ_mix = their sum, norm 5) give different numbers for every mix-up: the
    relative L2 divides by ‖Δ_mix‖ (5), not by the reference's norm, and first/second are not swapped."""
    d1, d2 = 3.0 * _e(0), 4.0 * _e(1)
    a = pair_algebra(d1 + d2, d1, d2)
    assert a["first"] == {"cos": pytest.approx(0.6), "rel_l2": pytest.approx(0.8)}  # ‖Δ₂‖/5; over ‖Δ₁‖ it'd be 4/3
    assert a["second"] == {"cos": pytest.approx(0.8), "rel_l2": pytest.approx(0.6)}
    assert a["mean"] == {"cos": pytest.approx(1.0), "rel_l2": pytest.approx(0.5)}
    assert a["sum"] == {"cos": pytest.approx(1.0), "rel_l2": pytest.approx(0.0, abs=1e-12)}
    # swapping the mixed Δ with a component changes the answer (Δ₁ against Δ₁+Δ₂ and Δ₂ is not the same question)
    swapped = pair_algebra(d1, d1 + d2, d2)
    assert swapped["first"]["cos"] == pytest.approx(0.6)
    assert swapped["first"]["rel_l2"] == pytest.approx(4 / 3)
    assert swapped["closer_to_sum"] is False


def test_fit_recovers_unequal_weights_of_correlated_components():
    g = torch.Generator().manual_seed(0)
    d1 = torch.randn(DIM, generator=g)
    d2 = 0.6 * d1 + torch.randn(DIM, generator=g)  # correlated, not parallel
    a = pair_algebra(2.0 * d1 - 0.5 * d2, d1, d2)
    assert a["fit"]["alpha"] == pytest.approx(2.0, abs=1e-6)
    assert a["fit"]["beta"] == pytest.approx(-0.5, abs=1e-6)
    assert a["fit"]["rel_l2"] == pytest.approx(0.0, abs=1e-6)
    assert a["fit"]["cos"] == pytest.approx(1.0)
    # off the (Δ₁, Δ₂) plane the residual is exactly the orthogonal part
    off = torch.zeros(DIM)
    off[-1] = 1.0
    off = off - (torch.linalg.pinv(torch.stack([d1, d2], 1)) @ off) @ torch.stack([d1, d2])  # ⟂ to both
    mix = d1 + d2 + off
    b = pair_algebra(mix, d1, d2)
    assert b["fit"]["rel_l2"] == pytest.approx(float(off.norm() / mix.norm()), rel=1e-5)


def test_specific_block_projects_the_shared_direction_out_of_everything():
    shared = _e(2)
    d1, d2 = _e(0) + 5.0 * shared, _e(1) + 5.0 * shared
    mix = d1  # dominated by the shared direction: raw cos to Δ₂ is high
    a = pair_algebra(mix, d1, d2, shared=shared)
    assert a["second"]["cos"] == pytest.approx(25 / 26)
    s = a["specific"]
    assert s["first"]["cos"] == pytest.approx(1.0)
    assert s["second"]["cos"] == pytest.approx(0.0, abs=1e-12)
    assert s["norms"]["mix"] == pytest.approx(1.0)
    assert s == pair_algebra(*(remove_shared(v, shared) for v in (mix, d1, d2)))
    assert "specific" not in s


def test_degenerate_inputs_are_named():
    with pytest.raises(AlgebraError, match="zero"):
        pair_algebra(torch.zeros(DIM), _e(0), _e(1))
    with pytest.raises(AlgebraError, match="1-D"):
        pair_algebra(torch.ones(DIM), torch.ones(DIM), torch.ones(DIM + 1))
    with pytest.raises(AlgebraError, match="shared direction of shape"):
        pair_algebra(_e(0), _e(0), _e(1), shared=torch.ones(3))
    with pytest.raises(AlgebraError, match="shared direction is zero"):
        pair_algebra(_e(0), _e(0), _e(1), shared=torch.zeros(DIM))
    a = pair_algebra(_e(0), _e(0), torch.zeros(DIM))  # a zero component: cos 0 by convention, no NaN
    assert a["second"]["cos"] == 0.0 and a["closer_to_sum"] is False


# ------------------------------------------------------------------------------------------ first order, real model


def _sum_adapter(w1: LoraWeights, w2: LoraWeights) -> LoraWeights:
    """The adapter with ΔW = ΔW₁ + ΔW₂ exactly: the avg merge is the mean by rank concatenation (scale 1), doubled."""
    mean = merge_adapters([w1, w2], method="avg")
    return LoraWeights(mean.layout, mean.A, {k: 2.0 * b for k, b in mean.B.items()})


def test_delta_is_additive_to_first_order(tiny_qwen2):
    """v is smooth in ΔW, so Δ(ΔW₁ + ΔW₂) = Δ(ΔW₁) + Δ(ΔW₂) + O(‖ΔW‖²): the relative error of additivity is O(‖ΔW‖),
    and ΔW = scale·B·A grows as std² here (A and B both drawn with ``std``)."""
    probe = DeltaProbe(tiny_qwen2, "generic5", "last_token")
    layout = derive_layout(tiny_qwen2.arch, LoraSpec(rank=2, alpha=4, targets="q,k,v,o,gate,up,down"))
    errors = []
    for std in (0.003, 0.01, 0.03):
        w1 = LoraWeights.random(layout, std=std, seed=1)
        w2 = LoraWeights.random(layout, std=std, seed=2)
        both = _sum_adapter(w1, w2)
        # the sum adapter really is ΔW₁ + ΔW₂ in every slot
        s = layout.slots[0]
        dw = lambda w: w.layout.scale * w.B[s.key] @ w.A[s.key]  # noqa: E731
        torch.testing.assert_close(dw(both), dw(w1) + dw(w2))
        with torch.no_grad():
            d1, d2 = probe(LoraWeights.stack([w1, w2]))
            d12 = probe(both)[0]
        errors.append(float((d12 - d1 - d2).norm() / d12.norm()))
        a = pair_algebra(d12, d1, d2)
        if std <= 0.01:
            assert a["sum"]["cos"] > 0.99, (std, a["sum"])
            assert a["closer_to_sum"] is True
            assert a["fit"]["alpha"] == pytest.approx(1.0, abs=0.05)
            assert a["fit"]["beta"] == pytest.approx(1.0, abs=0.05)
        assert a["sum"]["rel_l2"] == pytest.approx(errors[-1], rel=1e-4)
    assert errors[0] < 0.01, errors
    assert errors[0] < errors[1] < errors[2], errors
    # second order: std ×10/3 multiplies ‖ΔW‖ by ~11; the relative error must grow faster than std alone would
    assert errors[1] / errors[0] > 10 / 3 and errors[2] / errors[1] > 10 / 3, errors


# ------------------------------------------------------------------------------------------ zoo pairing


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_qwen2):
    return teacher_world(tmp_path_factory.mktemp("algebra"), tiny_qwen2)


def test_zoo_algebra_pairs_each_mixed_teacher_with_its_seed(world):
    entries = read_manifest(world["zoo"])
    deltas = world["deltas"]
    records = zoo_algebra(entries, deltas)
    assert [r["id"] for r in records] == ["a+b/s0", "b+c/s0"]
    by_id = {r["id"]: r for r in records}
    for mix, parts in (("a+b/s0", ("a", "b")), ("b+c/s0", ("b", "c"))):
        r = by_id[mix]
        assert r["status"] == "ok" and r["match"] == "same_step"
        assert r["pair"] == "+".join(parts) and r["tasks"] == list(parts) and r["seed"] == 0
        assert r["components"] == [f"{parts[0]}/s0", f"{parts[1]}/s0"]  # seed 0, never the seed-1 teachers
        assert r["algebra"] == pair_algebra(deltas[mix], deltas[f"{parts[0]}/s0"], deltas[f"{parts[1]}/s0"])

    shared = single_task_mean(entries, deltas)
    singles = [k for k in deltas if "+" not in k]
    assert len(singles) == 6
    torch.testing.assert_close(shared, torch.stack([deltas[k] for k in singles]).mean(0))
    with_shared = zoo_algebra(entries, deltas, shared=shared)
    for r in with_shared:
        assert (
            r["algebra"]["specific"]
            == pair_algebra(*(deltas[i] for i in (r["id"], *r["components"])), shared=shared)["specific"]
        )


def test_zoo_algebra_reports_a_missing_component_and_goes_on(world):
    entries = read_manifest(world["zoo"])
    deltas = {k: v for k, v in world["deltas"].items() if k != "c/s0"}
    records = zoo_algebra(entries, deltas)
    by_id = {r["id"]: r for r in records}
    assert by_id["a+b/s0"]["status"] == "ok"
    skipped = by_id["b+c/s0"]
    assert skipped["status"] == "skipped" and "algebra" not in skipped
    assert "'c'" in skipped["reason"] and "seed 0" in skipped["reason"] and "[1]" in skipped["reason"]
    # the mixed teacher's own Δ missing
    no_mix = zoo_algebra(entries, {k: v for k, v in world["deltas"].items() if k != "a+b/s0"})
    assert {r["id"]: r["status"] for r in no_mix} == {"a+b/s0": "skipped", "b+c/s0": "ok"}
    summary = summarize_pairs(records)
    assert summary["b+c"]["n"] == 0 and summary["b+c"]["skipped"] == 1
    assert summary["a+b"]["n"] == 1 and summary["a+b"]["closer_to_sum"]["of"] == 1


def _synthetic_zoo():
    """Components x, y at seeds 0, 1 (steps 10, 20); mixed x+y at seed 0 step 20 (matches), seed 1 step 30 (no
    component checkpoint at 30: falls back to step 20); seed 0's mixed Δ = Δx + Δy, seed 1's = Δx."""
    entries, deltas = [], {}
    for seed in (0, 1):
        for step in (10, 20):
            for i, task in enumerate(("x", "y")):
                e = manifest_entry(task, seed, step)
                entries.append(e)
                deltas[e.id] = (step / 10) * _e(i) + 0.1 * seed * _e(2)
    m0, m1 = manifest_entry("x+y", 0, 20, ("x", "y")), manifest_entry("x+y", 1, 30, ("x", "y"))
    entries += [m0, m1, manifest_entry("w+x", 0, 20, ("w", "x")), manifest_entry("x+y+z", 0, 20, ("x", "y", "z"))]
    deltas[m0.id] = deltas["x/s0/step20"] + deltas["y/s0/step20"]
    deltas[m1.id] = deltas["x/s1/step20"]
    deltas["w+x/s0/step20"] = _e(3)
    deltas["x+y+z/s0/step20"] = _e(3)
    return entries, deltas


def test_zoo_algebra_falls_back_to_the_seeds_last_step():
    entries, deltas = _synthetic_zoo()
    records = {r["id"]: r for r in zoo_algebra(entries, deltas)}
    assert set(records) == {"x+y/s0/step20", "x+y/s1/step30", "w+x/s0/step20", "x+y+z/s0/step20"}
    r0, r1 = records["x+y/s0/step20"], records["x+y/s1/step30"]
    assert r0["match"] == "same_step" and r0["components"] == ["x/s0/step20", "y/s0/step20"]
    assert r1["match"] == "last_step" and r1["components"] == ["x/s1/step20", "y/s1/step20"]
    assert r1["component_steps"] == [20, 20]
    assert r0["algebra"]["closer_to_sum"] is True and r1["algebra"]["closer_to_sum"] is False
    assert records["w+x/s0/step20"]["status"] == "skipped" and "'w'" in records["w+x/s0/step20"]["reason"]
    assert records["x+y+z/s0/step20"]["status"] == "skipped" and "needs 2" in records["x+y+z/s0/step20"]["reason"]


def test_summarize_pairs_over_seeds():
    entries, deltas = _synthetic_zoo()
    records = zoo_algebra(entries, deltas, shared=single_task_mean(entries, deltas))
    s = summarize_pairs(records)
    assert set(s) == {"x+y", "w+x", "x+y+z"}
    xy = s["x+y"]
    assert xy["n"] == 2 and xy["seeds"] == [0, 1] and xy["skipped"] == 0
    assert xy["closer_to_sum"] == {"pass": 1, "of": 2}
    assert xy["specific_closer_to_sum"]["of"] == 2
    fit_alpha = [r["algebra"]["fit"]["alpha"] for r in records if r["pair"] == "x+y"]
    assert xy["metrics"]["fit.alpha"]["mean"] == pytest.approx(sum(fit_alpha) / 2)
    cos = [r["algebra"]["sum"]["cos"] for r in records if r["pair"] == "x+y"]
    assert xy["metrics"]["sum.cos"]["mean"] == pytest.approx(sum(cos) / 2)
    assert xy["metrics"]["sum.cos"]["std"] == pytest.approx(abs(cos[0] - cos[1]) / math.sqrt(2))
    assert "specific.sum.rel_l2" in xy["metrics"] and "closer_to_sum" not in xy["metrics"]
    assert s["w+x"] == {"n": 0, "seeds": [], "skipped": 1, "closer_to_sum": {"pass": 0, "of": 0}, "metrics": {}}


# ------------------------------------------------------------------------------------------ figure


def test_algebra_figure_writes_or_names_why_not(tmp_path, monkeypatch):
    entries, deltas = _synthetic_zoo()
    records = zoo_algebra(entries, deltas, shared=single_task_mean(entries, deltas))
    assert "no usable" in algebra_figure([r for r in records if r["status"] != "ok"], tmp_path / "none.png")
    pytest.importorskip("matplotlib")
    out = algebra_figure(records, tmp_path / "fig" / "algebra.png")
    assert out == tmp_path / "fig" / "algebra.png" and out.stat().st_size > 1000
    assert algebra_figure(records, tmp_path / "specific.png", specific=True).is_file()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    reason = algebra_figure(records, tmp_path / "skipped.png")
    assert isinstance(reason, str) and "matplotlib" in reason
    assert not (tmp_path / "skipped.png").exists()
