"""The generator training set: a tiny zoo on tiny-qwen2 with its Δ cache, task-level splits (held-out tasks
and mixed teachers with a held-out component never reach training), shapes, collation, per-epoch
condition resampling and the errors for missing or broken Δ."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from deltalora.conditions import Conditioner, split_pools
from deltalora.config import LoraSpec
from deltalora.deltas import DeltaCache, DeltaSpec, compute_deltas, sources_from_manifest
from deltalora.lora import derive_layout
from deltalora.training import TrainConfig
from deltalora.training.data import (
    DatasetError,
    TeacherDataset,
    choose_heldout,
    choose_seen,
    collate_teachers,
    components,
    split_entries,
)
from deltalora.training.loop import fingerprint
from deltalora.zoo import read_manifest
from tests.helpers import N_PROMPTS, SPEC, teacher_world
from tests.helpers import add_teacher as _add_teacher


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_qwen2):
    """3 tasks x 2 seeds, mixed teachers a+b and b+c, their Δ (generic5, last token) and condition pools."""
    return teacher_world(tmp_path_factory.mktemp("dataset"), tiny_qwen2)


def _ds(world, **kw) -> TeacherDataset:
    return TeacherDataset(
        world["zoo"], world["conditioner"], world["spec"], cache=world["cache"], arch=world["arch"], **kw
    )


def test_heldout_tasks_never_reach_training(world):
    train = _ds(world, split="train", heldout=["c"])
    assert train.ids == ["a+b/s0", "a/s0", "a/s1", "b/s0", "b/s1"]
    assert train.excluded == ["b+c/s0"]  # mixed with a held-out component: in neither split
    for i in range(len(train)):
        ex = train[i]
        assert "c" not in ex.components and "c" not in ex.task.split("+")
    assert train.tasks == ["a", "b"]
    held = _ds(world, split="heldout", heldout=["c"])
    assert held.ids == ["c/s0", "c/s1"]
    # every condition row of a training example comes from a training task's condition pool
    cond = world["conditioner"]
    allowed = torch.cat([cond.embeddings["a"], cond.embeddings["b"]])
    held_rows = cond.embeddings["c"]
    for epoch in range(3):
        train.set_epoch(epoch)
        for ex in train:
            for row in ex.condition:
                assert torch.isclose(allowed, row).all(1).any()
                assert not torch.isclose(held_rows, row).all(1).any()


def test_split_entries_and_choose_heldout(world):
    entries = read_manifest(world["zoo"])
    parts = split_entries(entries, ["a", "c"])
    assert sorted(e.id for e in parts["train"]) == ["b/s0", "b/s1"]
    assert sorted(e.id for e in parts["heldout"]) == ["a/s0", "a/s1", "c/s0", "c/s1"]
    assert sorted(e.id for e in parts["excluded"]) == ["a+b/s0", "b+c/s0"]
    assert {components(e) for e in entries} >= {("a",), ("a", "b"), ("b", "c")}
    with pytest.raises(DatasetError, match=r"held-out task\(s\) \['d'\] are not in the zoo"):
        split_entries(entries, ["d"])
    assert choose_heldout(["c", "a", "b"], 1, seed=3) == choose_heldout(["a", "b", "c"], 1, seed=3)
    assert {tuple(choose_heldout("abc", 1, seed=s)) for s in range(20)} == {("a",), ("b",), ("c",)}
    with pytest.raises(DatasetError, match="leave at least one"):
        choose_heldout("abc", 3, seed=0)
    with pytest.raises(DatasetError, match="split is empty"):
        _ds(world, heldout=["a", "b", "c"])


def test_choose_seen_covers_every_family_and_is_deterministic():
    fams = {"math": 6, "text": 4, "code": 2}
    entries = [
        SimpleNamespace(task=f"{f}{i}", family=f, mixed=False)
        for f, n in fams.items()
        for i in range(n)
        for _ in (0, 1)
    ] + [SimpleNamespace(task="math0+text0", family="mixed", mixed=True)]  # a mixed teacher is no task's own
    seen = choose_seen(entries, 8, seed=0)
    assert len(seen) == 8 == len(set(seen)) and seen == sorted(seen)
    assert {e.family for e in entries if e.task in seen} == set(fams)  # every family
    assert choose_seen(list(reversed(entries)), 8, seed=0) == seen  # a function of the set, not its order
    assert len({tuple(choose_seen(entries, 8, seed=s)) for s in range(10)}) > 1  # the seed matters
    # fewer tasks than asked: all of them; fewer asked than families: one task of each of as many families
    assert (
        choose_seen(entries, 12, seed=0) == choose_seen(entries, 50, seed=0) == sorted({e.task for e in entries[:-1]})
    )
    two = choose_seen(entries, 2, seed=0)
    assert len({e.family for e in entries if e.task in two}) == 2
    assert choose_seen(entries, 0, seed=0) == []
    with pytest.raises(DatasetError, match="0 or more"):
        choose_seen(entries, -1, seed=0)


def test_training_conditions_never_draw_held_back_prompts(world):
    """The seen-task split: training teachers' conditions come from the kept part of their tasks' pools only, and
    a run directory trained on whole pools does not resume on split ones (the training fingerprint differs)."""
    cond = world["conditioner"]
    kept, held = split_pools(cond.pools, ["a", "b"], 0.5, seed=0)
    split = Conditioner(cond.encoder, kept, cond.n_prompts)
    train = TeacherDataset(world["zoo"], split, world["spec"], cache=world["cache"], arch=world["arch"], heldout=["c"])
    assert set(train.condition_parts) == {"a", "b"} and _ds(world, heldout=["c"]).condition_parts == {}
    back = Conditioner(cond.encoder, held, cond.n_prompts).embeddings
    allowed, forbidden = torch.cat([split.embeddings[t] for t in "ab"]), torch.cat([back[t] for t in "ab"])
    for epoch in range(4):
        for i in range(len(train)):
            for row in train.example(i, epoch).condition:
                assert torch.isclose(allowed, row).all(1).any()
                assert not torch.isclose(forbidden, row).all(1).any()
    cfg = TrainConfig(encoder="tiny-encoder")
    assert fingerprint(cfg, train, 1) != fingerprint(cfg, _ds(world, heldout=["c"]), 1)
    assert fingerprint(cfg, train, 1, legacy=True) != fingerprint(cfg, _ds(world, heldout=["c"]), 1, legacy=True)


def test_shapes_dtypes_and_collate(world, tiny_qwen2):
    ds = _ds(world, heldout=["c"])
    assert (ds.delta_dim, ds.cond_dim, ds.n_prompts) == (tiny_qwen2.arch.hidden_size, 32, N_PROMPTS)
    layout = derive_layout(tiny_qwen2.arch, SPEC)
    ex = ds[0]
    assert ex.condition.shape == (N_PROMPTS, 32) and ex.condition.dtype == torch.float32
    assert ex.delta.shape == (tiny_qwen2.arch.hidden_size,) and ex.delta.dtype == torch.float32
    for s in layout.slots:
        assert tuple(ex.weights.A[s.key].shape) == s.a_shape and tuple(ex.weights.B[s.key].shape) == s.b_shape
        assert ex.weights.A[s.key].dtype == torch.float32
    batches = list(DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate_teachers))
    assert [len(b) for b in batches] == [2, 2, 1]
    b = batches[0]
    assert (
        b.weights.num_adapters == 2 and b.conditions.shape == (2, N_PROMPTS, 32) and b.deltas.shape == (2, ds.delta_dim)
    )
    assert b.ids == ds.ids[:2] and b.families == ["math", "math"]
    # the Δ a teacher gets is the one compute_deltas stored for that adapter
    for i, tid in enumerate(b.ids):
        torch.testing.assert_close(b.deltas[i], world["deltas"][tid])
    lazy = _ds(world, heldout=["c"], preload=False)
    for s in layout.slots:
        torch.testing.assert_close(lazy[1].weights.A[s.key], ds[1].weights.A[s.key])


def test_teacher_deltas_and_their_mean_come_from_the_split_only(world):
    """The shared direction (training teachers' mean Δ) is over the training split: held-out Δ never enter it."""
    train, held = _ds(world, heldout=["c"]), _ds(world, split="heldout", heldout=["c"])
    assert train.deltas.shape == (len(train), train.delta_dim) and train.deltas.dtype == torch.float32
    assert torch.equal(train.deltas, torch.stack([train[i].delta for i in range(len(train))]))
    assert torch.allclose(train.mean_delta(), train.deltas.sum(0) / len(train), atol=1e-7)
    everything = torch.cat([train.deltas, held.deltas]).mean(0)
    assert not torch.allclose(train.mean_delta(), everything)


def test_conditions_resampled_per_epoch_and_deterministic(world):
    ds = _ds(world, heldout=["c"], seed=5)
    again = _ds(world, heldout=["c"], seed=5)
    other_seed = _ds(world, heldout=["c"], seed=6)
    e0 = [ds.example(i, 0).condition for i in range(len(ds))]
    e1 = [ds.example(i, 1).condition for i in range(len(ds))]
    for i in range(len(ds)):
        torch.testing.assert_close(again.example(i, 0).condition, e0[i])
    assert any(not torch.equal(x, y) for x, y in zip(e0, e1))
    assert any(not torch.equal(x, other_seed.example(i, 0).condition) for i, x in enumerate(e0))
    ds.set_epoch(1)
    torch.testing.assert_close(ds[2].condition, e1[2])
    # the prompts a teacher sees depend on its id, not on its position in the split
    full = _ds(world, heldout=[], seed=5)
    torch.testing.assert_close(full.example(full.ids.index("b/s1"), 0).condition, e0[ds.ids.index("b/s1")])


def test_missing_delta_names_the_command(world, tiny_qwen2, tmp_path):
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(world["zoo"], zoo)
    _add_teacher(zoo, tiny_qwen2, "a", 7, "math")  # no Δ computed for this one
    with pytest.raises(DatasetError) as info:
        TeacherDataset(zoo, world["conditioner"], world["spec"], cache=world["cache"], heldout=["c"])
    msg = str(info.value)
    assert "Δ missing from the cache" in msg and "1 of 6 teachers (first: a/s7)" in msg
    assert f"`deltalora deltas compute --backbone tiny-qwen2 --zoo {zoo} --probes generic5" in msg
    assert f"--cache {world['cache'].root}`" in msg
    # a Δ computed under another probe set does not count
    other = DeltaSpec.for_backbone(tiny_qwen2, "neutral24", "last_token")
    with pytest.raises(DatasetError, match="probes neutral24"):
        TeacherDataset(world["zoo"], world["conditioner"], other, cache=world["cache"])


def test_broken_delta_and_layout_mismatch(world, tiny_qwen2, tmp_path):
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(world["zoo"], zoo)
    cache = DeltaCache(tmp_path / "deltas")
    shutil.copytree(world["cache"].root, cache.root)
    spec = world["spec"]
    key = spec.key(zoo / "a/s0")
    cache.put(key, torch.full((tiny_qwen2.arch.hidden_size,), float("nan")), {})
    with pytest.raises(DatasetError, match="Δ of a/s0 has non-finite values"):
        TeacherDataset(zoo, world["conditioner"], spec, cache=cache)
    cache.put(key, torch.zeros(3, 4), {})
    with pytest.raises(DatasetError, match=r"Δ of a/s0 is torch.float32 \(3, 4\), expected a float32 vector"):
        TeacherDataset(zoo, world["conditioner"], spec, cache=cache)
    cache.put(key, world["deltas"]["a/s0"], {})
    e = _add_teacher(zoo, tiny_qwen2, "b", 9, "math", spec=LoraSpec(rank=4, alpha=8, targets="q,v"))
    compute_deltas(tiny_qwen2, [s for s in sources_from_manifest(zoo) if s.id == e.id], "generic5", "last_token", cache)
    with pytest.raises(DatasetError, match="LoRA layout .* differs"):
        TeacherDataset(zoo, world["conditioner"], spec, cache=cache)


def test_condition_pool_missing_for_a_task(world):
    cond = world["conditioner"]
    partial = Conditioner(cond.encoder, {"a": cond.pools["a"]}, n_prompts=2)
    with pytest.raises(DatasetError, match=r"no condition pool for task\(s\) \['b', 'c'\]"):
        TeacherDataset(world["zoo"], partial, world["spec"], cache=world["cache"])
    with pytest.raises(DatasetError, match="unknown split"):
        _ds(world, split="test")
