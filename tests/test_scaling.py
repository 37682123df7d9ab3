"""The task-scaling study (`deltalora scale`) on tiny-qwen2: stratified folds over tasks, nested training sets,
held-out tasks kept out of every fold's generator and baselines, the curve's arithmetic, resumption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deltalora.errors import ConfigError
from deltalora.experiment.config import ScalingConfig, load_scaling_config
from deltalora.experiment.scaling import ALL, make_folds, pool_order, run_scaling, sizes_for, summarize_scaling
from deltalora.experiment.scaling_report import _fold_signs, _fold_table, _labels, _x_axis, render
from deltalora.generators.checkpoint import read_checkpoint_metadata
from deltalora.retrieval import RetrievalIndex

TINY = Path("tests/fixtures/run/scaling.yaml")


def test_folds_partition_the_tasks_stratified_by_family():
    families = {f"{fam}{i}": fam for fam in "abcd" for i in range(5 if fam != "d" else 2)}  # 17 tasks, 4 families
    folds = make_folds(families, 5, seed=0)
    assert sorted(t for f in folds for t in f) == sorted(families)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for fam in "abc":  # a family with as many tasks as folds lands once in every fold
        assert all(sum(families[t] == fam for t in f) == 1 for f in folds)
    assert make_folds(families, 5, seed=0) == folds and make_folds(families, 5, seed=1) != folds
    with pytest.raises(ConfigError, match="cannot fill"):
        make_folds({"x": "a", "y": "a"}, 3, 0)


def test_a_group_of_sibling_tasks_is_held_out_together():
    """Siblings (two files of one benchmark) land in one fold, so none is in training while another is held out;
    folds stay balanced within the largest group's size and every family still spreads over the folds."""
    families = {f"{fam}{i}": fam for fam in "abc" for i in range(8)}  # 24 tasks, 3 families
    groups = {"a0": "ga", "a1": "ga", "a2": "ga", "b5": "gb", "b6": "gb", "c7": "c7"}
    folds = make_folds(families, 5, seed=0, groups=groups)
    assert sorted(t for f in folds for t in f) == sorted(families)
    for sibs in (["a0", "a1", "a2"], ["b5", "b6"]):
        assert sum(all(t in f for t in sibs) for f in folds) == 1
    assert max(map(len, folds)) - min(map(len, folds)) <= 3
    assert all(any(families[t] == fam for t in f) for f in folds for fam in "ab")
    assert make_folds(families, 5, seed=0, groups=groups) == folds
    assert make_folds(families, 5, seed=0, groups={}) == make_folds(families, 5, seed=0)
    with pytest.raises(ConfigError, match="in 2 groups cannot fill 3 folds"):
        make_folds({"x": "a", "y": "a", "z": "a"}, 3, 0, groups={"x": "g", "y": "g"})


def test_training_sets_are_nested_and_include_the_whole_pool():
    pool = [f"t{i}" for i in range(20)]
    order = pool_order(pool, fold=1, draw=0, seed=0)
    assert sorted(order) == sorted(pool) and order == pool_order(pool, 1, 0, 0) and order != pool_order(pool, 1, 1, 0)
    cfg = ScalingConfig(zoo="z.yaml", train={"generator": "mixture"}, sizes=[32, 8, 16])
    assert cfg.sizes == [8, 16, 32] and sizes_for(cfg, 20) == [8, 16, 20] and sizes_for(cfg, 64) == [8, 16, 32, 64]


def _recs(row, size, task, draws):
    return [{"row": row, "size": size, "task": task, "draw": d, "accuracy": a} for d, a in enumerate(draws)]


def _render(summary: dict, folds: list[list[str]], **extra) -> str:
    """The report of a hand-made summary, as results.json would hold it."""
    cfg = {
        "train": {"generator": "mixture", "steps": 3},
        "k": 3,
        "draws": 1,
        "eval": {"limit": 5},
        "min_own_gain": 0.05,
    }
    results = {"title": "t", "command": "c", "backbone": "b", "folds": folds, "wall_seconds": 1.0, "config": cfg}
    return render({**results, "finished_folds": list(range(len(folds))), "summary": summary, **extra}, None)


def test_the_curve_is_the_mean_gain_over_tasks_with_its_standard_error():
    recs = [{"row": "base", "task": t, "accuracy": 0.2} for t in ("a", "b")]
    recs += [{"row": "own", "task": t, "accuracy": 0.6} for t in ("a", "b")]
    recs += _recs("generator", 2, "a", [0.3, 0.3]) + _recs("generator", 2, "b", [0.2, 0.2])
    recs += _recs("generator", 4, "a", [0.5, 0.3]) + _recs("generator", 4, "b", [0.4, 0.2])
    recs += _recs("average_merge", 2, "a", [0.3, 0.3]) + _recs("average_merge", 2, "b", [0.3, 0.3])
    recs += _recs("average_merge", 4, "a", [0.3, 0.3]) + _recs("average_merge", 4, "b", [0.3, 0.3])
    s = summarize_scaling(recs)
    g2, g4 = s["curve"]["generator"][2], s["curve"]["generator"][4]
    assert g2["gain"] == pytest.approx(0.05) and g2["gain_se"] == pytest.approx(0.05)  # task gains 0.1 and 0.0
    # task gains 0.2 (draws 0.3, 0.1) and 0.1 (0.2, 0.0); the across-task mean is 0.25 in draw 0 and 0.05 in draw 1
    assert g4["gain"] == pytest.approx(0.15) and g4["draw_std"] == pytest.approx(0.1414213, abs=1e-6)
    assert g4["share_of_own_gain"] == pytest.approx((0.2 / 0.4 + 0.1 / 0.4) / 2)
    slope = s["slopes"]["average_merge"]
    assert slope["generator_change"] == pytest.approx(0.1) and slope["baseline_change"] == pytest.approx(0.0)
    assert slope["difference"] == pytest.approx(0.1) and slope["se"] == pytest.approx(0.0) and slope["n_tasks"] == 2
    assert s["by_family"] == {}  # no families given
    fam = summarize_scaling(recs, families={"a": "math", "b": "code"})["by_family"]
    assert list(fam) == ["code", "math"] and fam["math"]["size"] == 4 and fam["math"]["n_tasks"] == 1
    math, code = fam["math"], fam["code"]
    assert math["generator"]["gain"] == pytest.approx(0.2) and code["generator"]["gain"] == pytest.approx(0.1)
    assert code["own"]["gain"] == pytest.approx(0.4) and code["average_merge"]["gain"] == pytest.approx(0.1)
    assert code["retrieval"] is None  # no retrieval records


def test_the_whole_pools_of_unequal_folds_are_one_point_of_the_curve():
    # fold 0 holds out task a (pool of 4), fold 1 task b (pool of 3): their whole-pool sets are the curve's "all"
    recs = [{"fold": f, "row": "base", "task": t, "accuracy": 0.2} for f, t in enumerate("ab")]
    recs += [{"fold": f, "row": "own", "task": t, "accuracy": 0.6} for f, t in enumerate("ab")]
    for fold, (task, pool, gen) in enumerate((("a", 4, 0.5), ("b", 3, 0.3))):
        for n, acc in ((2, 0.2), (pool, gen)):
            for row, a in (("generator", acc), ("average_merge", 0.25)):
                recs += [
                    {
                        "fold": fold,
                        "row": row,
                        "size": n,
                        "whole_pool": n == pool,
                        "task": task,
                        "draw": 0,
                        "accuracy": a,
                    }
                ]
    s = summarize_scaling(recs)
    assert list(s["curve"]["generator"]) == [2, ALL] and s["pool_sizes"] == [3, 4]
    assert s["curve"]["generator"][ALL]["n_tasks"] == 2 and s["curve"]["generator"][ALL]["gain"] == pytest.approx(0.2)
    slope = s["slopes"]["average_merge"]
    assert (slope["from"], slope["to"], slope["n_tasks"]) == (2, ALL, 2)
    # fold by fold: fold 0 (task a) has the generator at +0.3 with its pool of 4, fold 1 (task b) at +0.1 with 3
    f0, f1 = s["by_fold"]["0"], s["by_fold"]["1"]
    assert f0["n_tasks"] == f1["n_tasks"] == 1 and f0["top"]["generator"]["size"] == ALL
    assert f0["top"]["generator"]["gain"] == pytest.approx(0.3) and f1["top"]["generator"]["gain"] == pytest.approx(0.1)
    assert f0["slopes"] == {}  # a change needs two tasks
    assert summarize_scaling([r for r in recs if r["fold"] == 0])["by_fold"] == {}  # one fold: no table
    back = json.loads(json.dumps(s))  # the report reads the summary back from results.json: string keys
    # a fold resumed on a CPU without native bf16
    text = _render(back, [["a"], ["b"]], eval_precision={"0": "bfloat16", "1": "float32"})
    assert "scored in bfloat16 (fold 0), float32 (fold 1)." in text
    assert "| all (3–4) |" in text and "2 → all (3–4) training tasks" in text
    assert "## By fold, all (3–4) training tasks" in text
    assert "| 0 | 1 | +30.0 ± 0.0 | +5.0 ± 0.0 |" in text  # the generator's and the merge's gain


def test_the_verdict_is_also_given_fold_by_fold():
    # two folds of two tasks: in fold 0 the generator climbs by 0.2 and 0.4 while the merge stays flat; in fold 1
    # neither moves
    recs = []
    for fold, tasks, climb in ((0, "ab", (0.2, 0.4)), (1, "cd", (0.0, 0.0))):
        for task, up in zip(tasks, climb):
            recs += [{"fold": fold, "row": "base", "task": task, "accuracy": 0.2}]
            for n in (2, 4):
                for row, acc in (("generator", 0.2 + (up if n == 4 else 0)), ("average_merge", 0.3)):
                    recs += [{"fold": fold, "row": row, "size": n, "task": task, "draw": 0, "accuracy": acc}]
    summary = summarize_scaling(recs)
    folds = summary["by_fold"]
    d0, d1 = folds["0"]["slopes"]["average_merge"], folds["1"]["slopes"]["average_merge"]
    assert (d0["from"], d0["to"]) == (2, 4)
    assert d0["difference"] == pytest.approx(0.3) and d0["se"] == pytest.approx(0.1)
    assert d1["difference"] == pytest.approx(0.0) and folds["1"]["top"]["average_merge"]["gain"] == pytest.approx(0.1)
    cfg = {"train": {"generator": "mixture", "steps": 3}, "k": 3, "retrieval": {}}
    lines = _fold_table(summary, _labels(cfg))
    assert "| 0 | 2 | +30.0 ± 10.0 | +10.0 ± 0.0 | +30.0 ± 10.0 |" in lines
    assert "| 1 | 2 | +0.0 ± 0.0 | +10.0 ± 0.0 | +0.0 ± 0.0 |" in lines
    assert any("generator − mean merge of the training teachers, change 2 → 4" in x for x in lines)
    assert _fold_signs(summary, "average_merge") == " Fold by fold, the difference is positive in 1 of 2."


def test_siblings_held_out_together_count_once_in_the_slope():
    # three siblings (a1-a3, one group) climb 0.3 over the merge, b and c by 0.0 and 0.1: over five tasks the
    # difference is 0.2 ± 0.063 (beyond 2 SE), over three units (the group's mean, b, c) 0.133 ± 0.088 (within)
    recs = []
    for task, up in (("a1", 0.3), ("a2", 0.3), ("a3", 0.3), ("b", 0.0), ("c", 0.1)):
        recs += [{"fold": 0, "row": "base", "task": task, "accuracy": 0.2}]
        for n in (2, 4):
            for row, acc in (("generator", 0.2 + (up if n == 4 else 0)), ("average_merge", 0.3)):
                recs += [{"fold": 0, "row": row, "size": n, "task": task, "draw": 0, "accuracy": acc}]
    groups = {"a1": "a", "a2": "a", "a3": "a"}
    d = summarize_scaling(recs, groups=groups)["slopes"]["average_merge"]
    assert d["n_tasks"] == 5 and d["difference"] == pytest.approx(0.2) and d["beyond_2se"]
    g = d["grouped"]
    assert g["n_units"] == 3 and g["difference"] == pytest.approx(0.4 / 3)
    assert g["se"] == pytest.approx((0.07 / 3) ** 0.5 / 3**0.5) and not g["beyond_2se"]
    assert "grouped" not in summarize_scaling(recs)["slopes"]["average_merge"]  # no groups: tasks are the units
    one_each = summarize_scaling(recs, groups={"a1": "a1"})["slopes"]["average_merge"]
    assert "grouped" not in one_each  # a group of one task changes nothing
    text = _render(json.loads(json.dumps(summarize_scaling(recs, groups=groups))), [["a1", "a2", "a3", "b", "c"]])
    assert "difference +20.0 ± 6.3 (SE over 5 tasks)" in text
    assert "as one unit (3 units), the difference is +13.3 ± 8.8 (within 2 SE)." in text
    # the gap itself at the largest size: the generator ends 0.2, 0.2, 0.2, -0.1 and 0.0 above the merge
    gap = d["at_largest"]
    assert gap["difference"] == pytest.approx(0.1) and gap["n_tasks"] == 5
    assert gap["grouped"]["difference"] == pytest.approx(0.1 / 3) and gap["grouped"]["n_units"] == 3
    assert (
        "- At 4 training tasks, the generator's gain minus that of the mean merge of the training teachers: "
        "+10.0 ± 6.3 (paired, SE over 5 tasks; within 2 SE). Counting each group of sibling tasks held out together "
        "as one unit (3 units), the difference is +3.3 ± 8.8 (within 2 SE)."
    ) in text


def test_the_whole_pools_sit_apart_from_the_largest_size_and_a_size_on_fewer_tasks_says_so():
    cell = {"n_tasks": 81}
    curve = {"generator": {"8": cell, "64": {"n_tasks": 61}, ALL: cell}, "average_merge": {"8": cell, ALL: cell}}
    at, tick = _x_axis(curve, [61, 65, 66, 66, 66])
    assert at == {"8": 8, "64": 64, ALL: 96.0}  # pools of mean 64.8 would hide the point at 64
    assert tick == {"8": "8", "64": "64\n(61 of 81 tasks)", ALL: "all (61–66)"}
    at, _ = _x_axis({"generator": {"8": cell, ALL: cell}}, [20, 22])
    assert at[ALL] == 21  # far enough from 8: at the pools' mean size


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_qwen2):
    out = tmp_path_factory.mktemp("scale") / "tiny"
    cfg = load_scaling_config(TINY)
    report = run_scaling(cfg, out, progress=False, backbone=tiny_qwen2)
    return cfg, out, report


def test_every_task_is_held_out_once_and_never_trains_its_folds_generator_or_baselines(study):
    cfg, out, report = study
    res = json.loads((out / "results.json").read_text())
    assert sorted(t for f in res["folds"] for t in f) == ["colours", "double", "pick"] and res["finished_folds"] == [
        0,
        1,
        2,
    ]
    for fold, tasks in enumerate(res["folds"]):
        for draw in range(2):
            for n in (1, 2):
                meta = read_checkpoint_metadata(
                    out / "generators" / f"f{fold}" / f"d{draw}" / f"n{n}" / "generator.safetensors"
                )
                trained = meta["extra"]["train_tasks"]
                assert len(trained) == n and not set(trained) & set(tasks)
                assert set(tasks) <= set(meta["extra"]["heldout"])  # the training set left the fold's tasks out
                index = RetrievalIndex.load(out / "retrieval" / f"index-f{fold}-d{draw}-n{n}.safetensors")
                assert set(index.groups) == set(trained)
        order = [pool_order([t for t in ("colours", "double", "pick") if t not in tasks], fold, d, 0) for d in (0, 1)]
        assert all(len(o) == 2 for o in order)
    # per fold: base + 2 own teachers + 2 draws x 2 sizes x (generator, merge, retrieval)
    assert len(res["records"]) == 3 * (1 + 2 + 2 * 2 * 3)
    assert "## Do more tasks help the generator more than the baselines?" in report.read_text()
    assert (out / "figures" / "scaling_curve.png").is_file()
    assert list(res["summary"]["curve"]["generator"]) == ["1", ALL] and res["summary"]["pool_sizes"] == [2]
    assert "| all (2) |" in report.read_text()
    assert res["eval_precision"] == {"0": "float32", "1": "float32", "2": "float32"}
    assert "eval items per task, scored in float32." in report.read_text()
    assert "## Timing" in report.read_text() and "| evaluate |" in report.read_text()
    assert res["families"] == {"colours": "knowledge", "double": "math", "pick": "knowledge"}
    fam, curve = res["summary"]["by_family"], res["summary"]["curve"]["generator"][ALL]
    assert list(fam) == ["knowledge", "math"] and [fam[f]["n_tasks"] for f in fam] == [2, 1]
    mean = (2 * fam["knowledge"]["generator"]["gain"] + fam["math"]["generator"]["gain"]) / 3
    assert mean == pytest.approx(curve["gain"])
    text = report.read_text()
    assert "## By task family, all (2) training tasks" in text and "| math | 1 | +0.0 | +0.0 |" in text


def test_deltalora_report_rerenders_a_study_from_its_results_json(study, tmp_path):
    from typer.testing import CliRunner

    from deltalora.cli import app

    _, out, report = study
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_bytes((out / "results.json").read_bytes())  # a committed results dir: no runs/
    res = CliRunner().invoke(app, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    assert (copy / "scaling.md").read_text() == report.read_text()
    assert (copy / "figures" / "scaling_curve.png").is_file() and not (copy / "report.md").exists()


def test_a_rerun_reuses_the_finished_folds_and_run_folds_splits_the_work(study, tiny_qwen2, tmp_path, monkeypatch):
    import deltalora.experiment.run as run

    cfg, out, _ = study
    calls = []
    monkeypatch.setattr(run, "evaluate_task", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(AssertionError))
    run_scaling(cfg, out, progress=False, backbone=tiny_qwen2)
    assert not calls
    # the study's cost is summed over every call into its directory (one fold per call on a small machine)
    assert json.loads((out / "results.json").read_text())["timing_all_calls"]["calls"] == 2
    assert "Resumed: 2 calls wrote into this run directory." in (out / "scaling.md").read_text()
    monkeypatch.undo()
    part = cfg.model_copy(update={"run_folds": [1], "zoo_dir": str(out / "zoo")})
    run_scaling(part, tmp_path / "part", progress=False, backbone=tiny_qwen2)
    res = json.loads((tmp_path / "part" / "results.json").read_text())
    assert res["finished_folds"] == [1] and {r["fold"] for r in res["records"]} == {1}


def test_scaling_config_errors():
    with pytest.raises(ValueError, match="run_folds"):
        ScalingConfig(zoo="z.yaml", train={"generator": "mixture"}, folds=3, run_folds=[3])
    with pytest.raises(ValueError, match="distinct positive"):
        ScalingConfig(zoo="z.yaml", train={"generator": "mixture"}, sizes=[0, 4])
