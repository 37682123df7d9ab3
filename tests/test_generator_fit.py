"""Generators that read the teacher library: compact's base A from a canonical zoo, the mixture generator, and fit —
a generator trained on three tiny teachers reproduces them, and fails to once its capacity is removed."""

from __future__ import annotations

import json

import pytest
import torch

from deltalora.errors import ConfigError
from deltalora.generators import build_generator
from deltalora.generators.checkpoint import GeneratorCheckpointError, load_generator, save_generator
from deltalora.generators.library import LibraryError, TeacherLibrary
from deltalora.generators.sizes import generator_sizes
from deltalora.lora import LoraWeights
from deltalora.training import LambdaSchedule, TeacherDataset, TrainConfig, WeightLoss, train_generator
from deltalora.training.losses import product_sq_norm
from tests.helpers import N_PROMPTS, teacher_world


@pytest.fixture(scope="module")
def canon(tmp_path_factory, tiny_qwen2):
    """A canonical tiny zoo with one teacher per task (a, b, c): the weight-loss floor is 0."""
    return teacher_world(tmp_path_factory.mktemp("canon"), tiny_qwen2, canonical=True, seeds=(0,), mixed=False)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory, tiny_qwen2):
    """A zoo of independently initialised teachers (no stored init), as every zoo before the canonical one."""
    return teacher_world(tmp_path_factory.mktemp("legacy"), tiny_qwen2, seeds=(0,), mixed=False)


def _dataset(world) -> TeacherDataset:
    return TeacherDataset(
        world["zoo"], world["conditioner"], world["spec"], cache=world["cache"], arch=world["arch"], split="train"
    )


def _library(world) -> TeacherLibrary:
    ds = _dataset(world)
    return TeacherLibrary.from_zoo(ds.zoo, ds.ids, world["arch"])


def _dw(w: LoraWeights, i: int, key: str) -> torch.Tensor:
    return float(w.layout.scale) * w.B[key][i] @ w.A[key][i]


def _fit(world, tiny_qwen2, tmp_path, name: str, options: dict, steps: int = 300) -> tuple[float, float, list]:
    cfg = TrainConfig(
        generator=name,
        generator_options=options,
        encoder="tiny-encoder",
        n_prompts=N_PROMPTS,
        steps=steps,
        batch_size=3,
        delta_batch=1,
        lr=0.01,
        warmup_steps=2,
        lam=LambdaSchedule(),
        save_every=1000,
    )
    out = tmp_path / name
    res = train_generator(cfg, _dataset(world), tiny_qwen2, out, progress=False)
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    tail = sum(r["loss_weights"] for r in recs[-10:]) / 10
    return tail, res.weight_loss_floor, recs


# ------------------------------------------------------------------------------------------ the library


def test_library_reads_the_zoo_init_and_groups(canon, legacy):
    lib = _library(canon)
    assert lib.groups == ("a", "b", "c") and len(lib) == 3
    assert lib.init is not None
    for key in lib.init.A:
        assert torch.equal(lib.init.A[key], canon["init"].A[key])
    names, means = lib.group_means()
    assert names == ("a", "b", "c") and means.num_adapters == 3
    assert _library(legacy).init is None  # not a canonical zoo: no common A


def test_library_reference_refuses_a_changed_or_missing_zoo(canon, tmp_path, tiny_qwen2):
    ref = _library(canon).reference()
    assert TeacherLibrary.from_reference(ref, tiny_qwen2.arch).sha256 == ref["sha256"]
    with pytest.raises(LibraryError, match="differ from those the generator was trained on"):
        TeacherLibrary.from_reference({**ref, "sha256": "0" * 64}, tiny_qwen2.arch)
    with pytest.raises(LibraryError, match="copy the zoo back"):
        TeacherLibrary.from_reference({**ref, "zoo": str(tmp_path / "gone")}, tiny_qwen2.arch)


# ------------------------------------------------------------------------------------------ compact's A0


def test_compact_starts_from_the_canonical_init_and_saves_it(canon, legacy, tmp_path):
    lib = _library(canon)
    layout = lib.weights.layout
    gen = build_generator("compact", layout, cond_dim=16, n_prompts=N_PROMPTS, library=lib, basis_dim=4)
    assert gen.spec["options"]["a0"] == "zoo"
    out = gen(torch.randn(2, N_PROMPTS, 16))
    for key in lib.weights.A:
        assert torch.equal(out.A[key][0], canon["init"].A[key])  # A0 = the teachers' common A
        assert not out.B[key].any()  # B = 0: ΔW = 0 at step 0
    path = save_generator(gen, tmp_path / "g.safetensors", {"backbone": "tiny-qwen2", "encoder": "tiny-encoder"})
    back = load_generator(path).gen
    for m in gen.modules_:
        assert torch.equal(getattr(back, f"base_a_{m}"), getattr(gen, f"base_a_{m}"))
    # a zoo without a common init: the seeded A, as before (and "zoo" is refused with the fix)
    old = _library(legacy)
    assert build_generator("compact", layout, 16, N_PROMPTS, library=old).spec["options"]["a0"] == "seed"
    with pytest.raises(ConfigError, match="use a0: seed"):
        build_generator("compact", layout, 16, N_PROMPTS, library=old, a0="zoo")


# ------------------------------------------------------------------------------------------ mixture


def test_mixture_starts_at_the_library_average_and_mixes_exactly(canon):
    lib = _library(canon)
    layout = lib.weights.layout
    cond = torch.randn(2, N_PROMPTS, 16)
    gens = {
        mix: build_generator("mixture", layout, 16, N_PROMPTS, library=lib, mix=mix, trunk_width=8)
        for mix in ("factors", "exact", "svd")
    }
    assert gens["factors"].spec["options"]["mix"] == "factors"
    torch.manual_seed(0)
    for g in gens.values():  # non-uniform weights
        with torch.no_grad():
            g.logits.weight.normal_()
            g.logits.bias.normal_()
            g.load_state_dict(gens["factors"].state_dict())
    w = gens["factors"].mixture_weights(cond)
    assert torch.allclose(w.sum(-1), torch.ones(2)) and w.std() > 0.01
    with torch.no_grad():
        outs = {mix: g(cond) for mix, g in gens.items()}
    assert outs["exact"].layout.spec.rank == 3 * layout.spec.rank
    for key in lib.weights.A:
        exact = sum(w[0, i] * _dw(lib.weights, i, key) for i in range(3))
        assert torch.allclose(_dw(outs["exact"], 0, key), exact, atol=1e-6)
        u, s, vh = torch.linalg.svd(exact)
        r = layout.spec.rank
        best = (u[:, :r] * s[:r]) @ vh[:r]  # the best rank-r approximation
        assert torch.allclose(_dw(outs["svd"], 0, key), best, atol=1e-5)
        a = sum(w[0, i] * lib.weights.A[key][i] for i in range(3))
        b = sum(w[0, i] * lib.weights.B[key][i] for i in range(3))
        assert torch.allclose(outs["factors"].A[key][0], a, atol=1e-6)
        assert torch.allclose(outs["factors"].B[key][0], b, atol=1e-6)
    # zero logits: every condition gets the plain average of the members
    fresh = build_generator("mixture", layout, 16, N_PROMPTS, library=lib, mix="exact", trunk_width=8)
    assert torch.allclose(fresh.mixture_weights(cond), torch.full((2, 3), 1 / 3))


def test_svd_mixture_gradient_stays_finite_when_one_member_is_picked(canon):
    """Weights on one member make the core's trailing singular values repeat at 0, where the SVD's own gradient is
    NaN; the truncated mixture's gradient must stay finite (and reach the logits)."""
    lib = _library(canon)
    for bias, moves in ((200.0, False), (5.0, True)):  # 200: the others underflow to exactly 0 (softmax saturated)
        gen = build_generator("mixture", lib.weights.layout, 16, N_PROMPTS, library=lib, mix="svd", trunk_width=8)
        with torch.no_grad():
            gen.logits.bias.copy_(torch.tensor([bias, 0.0, 0.0]))
        pred = gen(torch.randn(2, N_PROMPTS, 16))
        WeightLoss("product", lib.weights)(pred, LoraWeights.stack([lib.weights.select(1)] * 2)).backward()
        grads = [p.grad for p in gen.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert (float(gen.logits.bias.grad.abs().sum()) > 0) == moves


def test_mixture_checkpoint_reads_its_library_back(canon, tmp_path):
    lib = _library(canon)
    gen = build_generator("mixture", lib.weights.layout, 16, N_PROMPTS, library=lib, trunk_width=8)
    path = save_generator(gen, tmp_path / "m.safetensors", {"backbone": "tiny-qwen2", "encoder": "tiny-encoder"})
    assert path.stat().st_size < 200_000  # the members are referenced, not copied
    cond = torch.randn(1, N_PROMPTS, 16)
    with torch.no_grad():
        a, b = gen(cond), load_generator(path).gen(cond)
    assert all(torch.equal(a.B[k], b.B[k]) for k in a.B)
    with pytest.raises(ConfigError, match="needs the training teachers"):
        build_generator("mixture", lib.weights.layout, 16, N_PROMPTS)
    moved = tmp_path / "moved"
    canon["zoo"].rename(moved)
    try:
        with pytest.raises(GeneratorCheckpointError, match="copy the zoo back"):
            load_generator(path)
    finally:
        moved.rename(canon["zoo"])
    sizes = generator_sizes(lib.weights.layout, 16, N_PROMPTS, ["compact", "mixture"])
    assert sizes["mixture"]["num_parameters"] is None  # its size depends on the library it is built on


def test_mixture_generators_of_one_library_share_its_members(canon, tmp_path, monkeypatch):
    import gc

    import deltalora.generators.library as library_mod
    import deltalora.generators.mixture as mixture_mod

    lib = _library(canon)
    gens = [build_generator("mixture", lib.weights.layout, 16, N_PROMPTS, library=lib, trunk_width=8) for _ in "ab"]
    meta = {"backbone": "t", "encoder": "e"}
    paths = [save_generator(g, tmp_path / f"m{i}.safetensors", meta) for i, g in enumerate(gens)]
    del gens, lib
    gc.collect()
    first = load_generator(paths[0]).gen
    reads = []
    real = library_mod.load_adapter
    monkeypatch.setattr(library_mod, "load_adapter", lambda *a, **k: reads.append(a) or real(*a, **k))
    second = load_generator(paths[1]).gen  # another generator over the same teachers: no adapter read again
    assert reads == []
    assert first.a0.data_ptr() == second.a0.data_ptr() and first.b0.data_ptr() == second.b0.data_ptr()
    cond = torch.randn(2, N_PROMPTS, 16)
    with torch.no_grad():
        assert all(torch.equal(first(cond).A[k], second(cond).A[k]) for k in first(cond).A)
    moved = tmp_path / "moved"  # a loaded generator still holds the members; the zoo is checked all the same
    canon["zoo"].rename(moved)
    try:
        with pytest.raises(GeneratorCheckpointError, match="copy the zoo back"):
            load_generator(paths[1])
    finally:
        moved.rename(canon["zoo"])
    assert len(mixture_mod._SHARED) == 1
    del first, second
    gc.collect()
    assert len(mixture_mod._SHARED) == 0  # held only while a generator holds them
    load_generator(paths[0])
    assert len(reads) > 0  # and read again once nobody did


def test_product_norm_compares_adapters_of_different_rank_and_scale(canon):
    lib = _library(canon)
    gen = build_generator("mixture", lib.weights.layout, 16, N_PROMPTS, library=lib, mix="exact", trunk_width=8)
    with torch.no_grad():
        pred = gen(torch.randn(3, N_PROMPTS, 16))
    got = product_sq_norm(pred, lib.weights)
    want = [sum(float((_dw(pred, i, k) - _dw(lib.weights, i, k)).square().sum()) for k in pred.A) for i in range(3)]
    assert torch.allclose(got, torch.tensor(want), rtol=1e-4)


# ------------------------------------------------------------------------------------------ fit


def test_generators_fit_three_teachers_and_fail_without_capacity(canon, tiny_qwen2, tmp_path):
    """L_weights floor is 0 here (one teacher per task). With per-module bases wide enough for every teacher's B,
    compact reaches ~0; with one basis direction per module it cannot; the mixture selects each teacher."""
    wide, floor, recs = _fit(
        canon, tiny_qwen2, tmp_path, "compact", {"trunk_width": 64, "head_hidden": 32, "basis_dim": 16}
    )
    assert floor == pytest.approx(0.0, abs=1e-9)
    assert recs[0]["loss_weights"] == pytest.approx(1.0, abs=1e-4)  # B = 0 at step 0
    assert wide < 0.02
    narrow, _, _ = _fit(
        canon, tiny_qwen2, tmp_path / "narrow", "compact", {"trunk_width": 64, "head_hidden": 32, "basis_dim": 1}
    )
    assert narrow > 0.5
    mixed, _, recs = _fit(canon, tiny_qwen2, tmp_path, "mixture", {"trunk_width": 32}, steps=100)
    assert recs[0]["loss_weights"] < 1.0  # starts at the library average, not at zero
    assert mixed < 0.01
    # the trained mixture picks each task's own teacher
    ds = _dataset(canon)
    gen = load_generator(tmp_path / "mixture" / "generator.safetensors").gen
    cond = torch.stack([ds.example(i, 5).condition for i in range(len(ds))])
    teachers = _library(canon).weights
    with torch.no_grad():
        assert torch.equal(gen.mixture_weights(cond).argmax(-1), torch.arange(3))
        assert float(WeightLoss("product", teachers)(gen(cond), teachers)) < 0.02
