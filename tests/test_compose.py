"""The compositionality study end to end on tiny-qwen2 (`deltalora compose`): Δ algebra of the mixed teacher, composed
adapters scored on both component tasks, interference and the seed criteria, resumption, and its config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deltalora.errors import ConfigError
from deltalora.experiment.compose import interference, pair_candidates, rows, run_compose
from deltalora.experiment.config import ComposeConfig, load_compose_config
from deltalora.lora import weights_hash
from deltalora.lora.merge import merge_adapters
from deltalora.zoo import read_manifest
from deltalora.zoo.manifest import last_teachers

TINY = Path("tests/fixtures/run/compose.yaml")
PAIR = "colours+double"


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_qwen2):
    out = tmp_path_factory.mktemp("compose") / "tiny"
    cfg = load_compose_config(TINY)
    report = run_compose(cfg, out, progress=False, backbone=tiny_qwen2)
    return cfg, out, report


def test_study_scores_every_composed_row_on_both_component_tasks(study):
    cfg, out, report = study
    res = json.loads((out / "results.json").read_text())
    assert list(res["pairs"]) == [PAIR]
    p = res["pairs"][PAIR]
    assert p["tasks"] == ["colours", "double"] and p["cross_family"]
    for task in ("colours", "double"):
        got = p["eval"][task]["rows"]
        assert set(got) == set(rows(cfg))
        assert got["base"]["arms"] == ["base"]
        # one own teacher, one mixed teacher and one merge per zoo seed; one generated / retrieved per generator seed
        for row in ("own", "mixed", "merge_avg", "merge_ties", "generated", "retrieval_sum"):
            assert len(got[row]["accuracies"]) == 2, row
        assert all(0.0 <= a <= 1.0 for r in got.values() for a in r["accuracies"])
    # the generator and the predictor never saw a mixed teacher
    assert res["mixed_excluded"] == 4 and res["train_teachers"] == 12
    text = report.read_text()
    assert "## Δ algebra" in text and "## Interference" in text and PAIR in text
    assert (out / "figures" / "compose_interference.png").is_file()


def test_interference_is_accuracy_minus_own_teacher_and_the_criterion_follows_it(study):
    cfg, out, _ = study
    p = json.loads((out / "results.json").read_text())["pairs"][PAIR]
    inter = p["interference"]
    for row in ("mixed", "merge_avg", "generated"):
        drops = []
        for task in ("colours", "double"):
            r = p["eval"][task]["rows"]
            own = sum(r["own"]["accuracies"]) / 2
            want = sum(a - own for a in r[row]["accuracies"]) / len(r[row]["accuracies"])
            assert inter[row]["tasks"][task]["drop"]["mean"] == pytest.approx(want)
            drops.append(want)
        assert inter[row]["mean_drop"] == pytest.approx(sum(drops) / 2)
    for row in ("mixed", "generated"):
        v = inter[row]["vs_naive_merge"]
        assert v["merge"] == "merge_avg"
        assert v["pass"] == (inter[row]["mean_drop"] >= inter["merge_avg"]["mean_drop"])


def test_interference_flags_a_row_that_keeps_too_little_of_the_gain():
    cfg = ComposeConfig(zoo="z.yaml", train={"generator": "mixture"}, retrieval=None, retained=0.5)
    rows_ = {
        "base": {"accuracies": [0.2]},
        "own": {"accuracies": [0.8, 0.8]},
        "mixed": {"accuracies": [0.7, 0.7]},  # keeps 5/6 of the gain
        "merge_avg": {"accuracies": [0.3, 0.3]},  # keeps 1/6: catastrophic
        "merge_ties": {"accuracies": [0.8, 0.8]},
        "generated": {"accuracies": [0.2, 0.2]},
    }
    out = interference({"a": {"rows": rows_}, "b": {"rows": rows_}}, cfg)
    assert out["mixed"]["catastrophic"] is False and out["merge_avg"]["catastrophic"] is True
    assert out["mixed"]["tasks"]["a"]["retained"] == pytest.approx(5 / 6)
    assert out["mixed"]["vs_naive_merge"]["pass"] and not out["generated"]["vs_naive_merge"]["pass"]
    assert out["merge_ties"]["mean_drop"] == pytest.approx(0.0)


def test_algebra_pairs_each_mixed_teacher_with_its_seeds_components_on_every_probe_set(study):
    cfg, out, _ = study
    res = json.loads((out / "results.json").read_text())
    assert set(res["algebra"]) == {"generic5", "task:train:2"}
    for name, a in res["algebra"].items():
        ok = [r for r in a["records"] if r["status"] == "ok"]
        assert len(ok) == 2, name  # the mixed teacher of each zoo seed, at its last checkpoint
        for r in ok:
            assert all(f"/s{r['seed']}/" in c for c in r["components"]) and r["match"] == "same_step"
        assert a["summary"][PAIR]["closer_to_sum"]["of"] == 2
        assert sorted(r["seed"] for r in ok) == [0, 1] and len({r["step"] for r in ok}) == 1
    # generic probes remove the single-task teachers' shared direction; task probes (a pair's own prompts) do not
    assert "specific" in res["algebra"]["generic5"]["records"][0]["algebra"]
    assert "specific" not in res["algebra"]["task:train:2"]["records"][0]["algebra"]


def test_task_probe_algebra_probes_all_three_adapters_on_the_pairs_prompts(study, tiny_qwen2):
    """The union-probe Δ of a component differs from its own-task Δ: computing the algebra on the components' own
    probes (the wrong vectors) would give other numbers."""
    from deltalora.deltas import DeltaProbe, resolve_probes
    from deltalora.deltas.algebra import pair_algebra
    from deltalora.experiment.compose import prepare_compose

    cfg, out, _ = study
    ctx = prepare_compose(cfg, out, progress=False, backbone=tiny_qwen2)
    probes = resolve_probes("task:train:2", ctx.tasks, tiny_qwen2.tokenizer)
    probe = DeltaProbe(tiny_qwen2, probes, cfg.train.representation)
    res = json.loads((out / "results.json").read_text())
    rec = next(r for r in res["algebra"]["task:train:2"]["records"] if r["status"] == "ok")
    entries = {e.id: e for e in ctx.entries}
    ws = [ctx.adapter(entries[i]) for i in [rec["id"], *rec["components"]]]
    from deltalora.lora import LoraWeights

    with torch.no_grad():
        union = probe(LoraWeights.stack(ws), [("colours", "double")] * 3)
        own = probe(LoraWeights.stack(ws), [("colours", "double"), "colours", "double"])
    right = pair_algebra(union[0], union[1], union[2])
    wrong = pair_algebra(own[0], own[1], own[2])
    assert rec["algebra"]["sum"]["cos"] == pytest.approx(right["sum"]["cos"], abs=1e-5)
    assert abs(wrong["sum"]["cos"] - right["sum"]["cos"]) > 1e-4


def test_merges_are_the_components_teachers_of_one_seed(study, tiny_qwen2):
    from deltalora.experiment.compose import prepare_compose

    cfg, out, _ = study
    ctx = prepare_compose(cfg, out, progress=False, backbone=tiny_qwen2)
    cands = pair_candidates(ctx, PAIR, {}, {})
    for seed in (0, 1):
        a = ctx.adapter(last_teachers(ctx.entries, "colours")[seed])
        b = ctx.adapter(last_teachers(ctx.entries, "double")[seed])
        want = merge_adapters([a, b], method="avg")
        got = cands[f"merge_avg/s{seed}"][1]
        assert weights_hash(got, "") == weights_hash(want, "")
        mixed = ctx.adapter(last_teachers(ctx.entries, PAIR)[seed])
        assert weights_hash(cands[f"mixed/s{seed}"][1], "") == weights_hash(mixed, "")
    assert max(e.step for e in read_manifest(ctx.zoo_dir) if e.task == PAIR) == last_teachers(ctx.entries, PAIR)[0].step


def test_rerun_reuses_every_score_and_the_algebra(study, tiny_qwen2, monkeypatch):
    import deltalora.experiment.compose as compose
    import deltalora.experiment.merge_cache as merge_cache
    import deltalora.experiment.run as run

    cfg, out, _ = study
    before = (out / "algebra" / "task_train_2.json").read_bytes()

    def boom(*a, **k):
        raise AssertionError("a rerun must not evaluate again")

    def no_dense_merge(adapters, weights=None, method="avg", **kw):
        if method != "avg":
            raise AssertionError(f"a rerun must read the {method} merges back")
        return merge_adapters(adapters, weights, method, **kw)

    monkeypatch.setattr(run, "evaluate_task", boom)
    monkeypatch.setattr(compose, "zoo_algebra", boom)
    monkeypatch.setattr(merge_cache, "merge_adapters", no_dense_merge)
    run_compose(cfg, out, progress=False, backbone=tiny_qwen2)
    assert (out / "algebra" / "task_train_2.json").read_bytes() == before


def test_unknown_pair_and_bad_merges_are_one_line_errors(study, tmp_path, tiny_qwen2):
    _, out, _ = study
    cfg = load_compose_config(TINY).model_copy(update={"pairs": ["colours+pick"], "zoo_dir": str(out / "zoo")})
    with pytest.raises(ConfigError, match="not mixed tasks"):
        run_compose(cfg, tmp_path / "a", progress=False, backbone=tiny_qwen2)
    with pytest.raises(ValueError, match="unknown merge method"):
        ComposeConfig(zoo="z.yaml", train={"generator": "mixture"}, merges=["avg", "bogus"])
