"""Retrieval: the Δ predictor learns a condition→Δ map, the index ranks and weights teachers, round-trips through
its file, refuses a changed zoo, and `deltalora retrieve` writes a merged PEFT adapter or fails in one line."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from typer.testing import CliRunner

from deltalora.cli import app
from deltalora.lora import load_adapter
from deltalora.lora.merge import delta_w, merge_adapters
from deltalora.retrieval import (
    DeltaPredictor,
    RetrievalError,
    RetrievalIndex,
    build_index,
    fit_delta_predictor,
    predictor_cosines,
    retrieve_adapter,
)
from deltalora.training.data import TeacherDataset
from tests.helpers import teacher_world


class ClusterSet:
    """A stand-in training set: task t's conditions are noisy copies of one embedding, its Δ one fixed direction
    plus a shared offset (what every fine-tune shares)."""

    def __init__(self, tasks=4, per_task=3, dim=12, delta_dim=20, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.centres = torch.randn(tasks, dim, generator=g)
        self.shared_dir = torch.randn(delta_dim, generator=g) * 3
        self.task_deltas = torch.randn(tasks, delta_dim, generator=g)
        self.task_of = [t for t in range(tasks) for _ in range(per_task)]
        self.deltas = torch.stack([self.shared_dir + self.task_deltas[t] for t in self.task_of])
        self.cond_dim, self.delta_dim = dim, delta_dim

    def mean_delta(self):
        return self.deltas.mean(0)

    def __len__(self):
        return len(self.task_of)

    def condition(self, task: int, key: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 * task + key)
        return self.centres[task] + 0.3 * torch.randn(4, self.cond_dim, generator=g)

    def example(self, i, epoch):
        return SimpleNamespace(condition=self.condition(self.task_of[i], 7919 * epoch + i))


def test_delta_predictor_learns_the_task_specific_delta_of_unseen_conditions():
    data = ClusterSet()
    fresh = torch.stack([data.condition(t, 10**6 + t) for t in range(4)])
    truth = torch.stack([data.shared_dir + data.task_deltas[t] for t in range(4)])
    untrained = DeltaPredictor(data.cond_dim, data.delta_dim)
    pred, log = fit_delta_predictor(data, steps=300, batch_size=8, lr=3e-3, hidden=64, seed=0)
    assert log["curve"][-1] < 0.5 * log["curve"][0] and log["train_cosine"] > 0.9
    after = predictor_cosines(pred, fresh, truth, data.mean_delta())
    before = predictor_cosines(untrained, fresh, truth, data.mean_delta())
    assert min(after) > 0.9 and max(before) < 0.8
    again, _ = fit_delta_predictor(data, steps=300, batch_size=8, lr=3e-3, hidden=64, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(pred.state_dict().values(), again.state_dict().values()))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_qwen2):
    w = teacher_world(tmp_path_factory.mktemp("retrieval"), tiny_qwen2, canonical=True, mixed=False)
    train = TeacherDataset(w["zoo"], w["conditioner"], w["spec"], cache=w["cache"], arch=w["arch"])
    pred, log = fit_delta_predictor(train, steps=20, hidden=16, seed=0)
    w.update(train=train, index=build_index(train, pred, info=log))
    return w


def test_index_ranks_by_cosine_and_weights_by_softmax(world):
    index = world["index"]
    cond = world["conditioner"].sample("b", seed=5)
    for by in ("delta", "condition"):
        hits = index.retrieve(cond, by=by, k=4, temperature=0.1)
        cos = [h.cosine for h in hits]
        assert cos == sorted(cos, reverse=True) and len({h.id for h in hits}) == 4
        assert abs(sum(h.weight for h in hits) - 1) < 1e-9
        assert [h.weight for h in hits] == sorted((h.weight for h in hits), reverse=True)
        all_cos = index.scores(cond, by)
        assert cos[0] == pytest.approx(float(all_cos.max()), abs=1e-6)
    # by condition, task b's own prompts find task b's teachers first
    assert {h.group for h in index.retrieve(cond, by="condition", k=2)} == {"b"}
    # a hotter temperature flattens the weights
    flat = index.retrieve(cond, by="condition", k=4, temperature=100.0)
    assert max(h.weight for h in flat) - min(h.weight for h in flat) < 0.01


def test_a_delta_query_finds_the_teacher_it_equals_and_a_sum_finds_both_components(world):
    index = world["index"]
    i, j = 0, len(index) - 1  # two teachers of different tasks
    assert index.groups[i] != index.groups[j]
    hit = index.retrieve_delta(index.deltas[i], k=1)[0]
    assert hit.id == index.ids[i] and hit.cosine == pytest.approx(1.0, abs=1e-5)
    # the query's shared-direction component is projected out like the keys': adding it changes nothing
    moved = index.retrieve_delta(index.deltas[i] + 3.0 * index.shared, k=3)
    assert [h.id for h in moved] == [h.id for h in index.retrieve_delta(index.deltas[i], k=3)]
    # a condition's Δ scores are the Δ scores of its predicted Δ̂
    cond = world["conditioner"].sample("b", seed=5)
    assert torch.allclose(index.scores(cond, "delta"), index.delta_scores(index.predict(cond)))
    with pytest.raises(RetrievalError, match="Δ query has shape"):
        index.retrieve_delta(index.deltas[i][:-1])


def test_index_round_trips_through_its_file(world, tmp_path):
    index = world["index"]
    back = RetrievalIndex.load(index.save(tmp_path / "index.safetensors"))
    assert back.ids == index.ids and back.sha256 == index.sha256 and back.encoder == index.encoder
    assert torch.equal(back.deltas, index.deltas) and torch.equal(back.conditions, index.conditions)
    cond = world["conditioner"].sample("a", seed=1)
    assert [h.id for h in back.retrieve(cond, k=3)] == [h.id for h in index.retrieve(cond, k=3)]
    assert back.info["steps"] == 20


def test_retrieved_adapter_is_the_weighted_merge_of_the_hits(world):
    index = world["index"]
    cond = world["conditioner"].sample("c", seed=2)
    merged, hits = retrieve_adapter(index, cond, by="delta", k=3, merge="avg", arch=world["arch"])
    adapters = [load_adapter(d, world["arch"]) for d in index.adapter_dirs(hits)]
    expected = merge_adapters(adapters, [h.weight for h in hits], "avg")
    for key in merged.A:
        assert torch.allclose(delta_w(merged, key), delta_w(expected, key), atol=1e-6)


def test_bad_retrieval_requests_are_one_line_errors(world, tmp_path):
    index = world["index"]
    cond = world["conditioner"].sample("a")
    for kwargs, match in (
        ({"k": len(index) + 1}, "k must be between 1 and"),
        ({"k": 0}, "k must be between 1 and"),
        ({"temperature": float("nan")}, "temperature"),
        ({"by": "weights"}, "unknown retrieval key"),
    ):
        with pytest.raises(RetrievalError, match=match):
            index.retrieve(cond, **kwargs)
    with pytest.raises(RetrievalError, match=r"\[n_prompts, "):
        index.retrieve(torch.zeros(3, 5))
    no_pred = RetrievalIndex(**{**index.__dict__, "predictor": None})
    with pytest.raises(RetrievalError, match="no Δ predictor"):
        no_pred.retrieve(cond, by="delta")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not an index")
    with pytest.raises(RetrievalError, match="bad.safetensors: not a retrieval index") as err:
        RetrievalIndex.load(bad)
    assert "\n" not in str(err.value)


def test_a_changed_zoo_is_refused(world, tmp_path, tiny_qwen2):
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(world["zoo"], zoo)
    index = world["index"]
    hits = index.retrieve(world["conditioner"].sample("a"), k=1)
    assert index.adapter_dirs(hits, zoo)[0].is_dir()
    manifest = zoo / "manifest.jsonl"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    lines[0]["sha256"] = "0" * 64
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(RetrievalError, match="differ from those the index was built on"):
        index.adapter_dirs(hits, zoo)
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines[1:]))  # a teacher of the index is gone
    with pytest.raises(RetrievalError, match=rf"teacher\(s\) \['{lines[0]['id']}'\] of the index are not in this zoo"):
        index.adapter_dirs(hits, zoo)
    with pytest.raises(RetrievalError, match="no zoo there"):
        index.adapter_dirs(hits, tmp_path / "nowhere")


def test_retrieve_cli_writes_a_merged_adapter_and_names_the_teachers(world, tmp_path, tiny_qwen2):
    path = world["index"].save(tmp_path / "index.safetensors")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"task b item {i}?"}) + "\n" for i in range(10)))
    out = tmp_path / "adapter"
    args = ["retrieve", "--index", str(path), "--prompts", str(prompts), "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--by", "condition", "--k", "2", "--merge", "svd", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert [t["task"] for t in report["teachers"]] == ["b", "b"] and report["rank"] == 2
    assert load_adapter(out, world["arch"]).layout.spec.rank == 2
    PeftModel.from_pretrained(copy.deepcopy(tiny_qwen2.model), str(out))  # stock PEFT loads it
    res = CliRunner().invoke(app, [*args, "--k", "3"])
    assert res.exit_code == 0 and res.output.count("(cosine") == 3


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--k", "99"], "k must be between 1 and"),
        (["--merge", "linear"], "unknown merge method"),
        (["--by", "weights"], "unknown retrieval key"),
    ],
)
def test_retrieve_cli_refuses_bad_input_and_writes_nothing(world, tmp_path, extra, match):
    path = world["index"].save(tmp_path / "index.safetensors")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello?"}) + "\n")
    out = tmp_path / "adapter"
    res = CliRunner().invoke(
        app, ["retrieve", "--index", str(path), "--prompts", str(prompts), "--out", str(out), *extra]
    )
    assert res.exit_code != 0 and match in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = CliRunner().invoke(app, ["retrieve", "--index", str(path), "--prompts", str(empty), "--out", str(out)])
    assert res.exit_code != 0 and "empty.jsonl" in res.output and not out.exists()
