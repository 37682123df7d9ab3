"""report.md, results.json and figures from a synthetic held-out results dict (no models)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from deltalora.errors import ConfigError
from deltalora.experiment import TargetConfig, rerender, summarize, write_report
from deltalora.experiment.markdown import ablation_table
from deltalora.experiment.stats import interval_level, paired_bootstrap

ROWS = ["base", "average_merge", "weight_only", "delta", "oracle", "delta_random_condition"]
LABELS = {
    "base": "base model",
    "average_merge": "mean of training teachers",
    "weight_only": "weight-only generator (λ=0, DnD)",
    "delta": "Δ-augmented generator",
    "oracle": "held-out task's own teacher (oracle)",
    "delta_random_condition": "Δ-augmented, random conditions",
}


def make_results(delta_accs: list[float], delta_cos: float = 0.85, random_acc: float = 0.42) -> dict:
    """Two held-out tasks with the same numbers; base 0.40, oracle 0.60, weight-only 0.45 / cosine 0.40."""
    accs = {
        "base": [0.40],
        "average_merge": [0.42, 0.44],
        "weight_only": [0.44, 0.46],
        "delta": delta_accs,
        "oracle": [0.60],
        "delta_random_condition": [random_acc],
    }
    cos = {
        "base": None,
        "average_merge": [0.2, 0.3],
        "weight_only": [0.4, 0.4],
        "delta": [delta_cos] * len(delta_accs),
        "oracle": [1.0],
        "delta_random_condition": [0.1],
    }
    scos = {r: None if c is None else [x - 0.55 for x in c] for r, c in cos.items()}  # task-specific: lower
    task = {
        "kind": "mc",
        "n_items": 50,
        "rows": {r: {"accuracies": accs[r], "delta_cosines": cos[r], "delta_cosines_specific": scos[r]} for r in ROWS},
    }
    return {
        "title": "deltalora held-out experiment (test)",
        "command": "deltalora run --config configs/quick.yaml",
        "backbone": "tiny-qwen2",
        "train_tasks": ["rg_chain_sum", "math"],
        "heldout_tasks": ["bb_navigate", "bb_date"],
        "rows": ROWS,
        "row_labels": LABELS,
        "tasks": {"bb_navigate": task, "bb_date": json.loads(json.dumps(task))},
        "timing": {"zoo": 12.5, "train": 30.0},
        "notes": ["synthetic"],
    }


def target_line(text: str, letter: str) -> str:
    (line,) = [x for x in text.splitlines() if f"**({letter})**" in x]
    return line


@pytest.fixture
def logs(tmp_path):
    """Two JSONL logs; the first was resumed (step 2 repeated) and killed mid-line."""
    a, b = tmp_path / "wo.jsonl", tmp_path / "delta.jsonl"

    def rec(s, lw, ld, c):
        return json.dumps(
            {
                "step": s,
                "loss_weights": lw,
                "loss_delta": ld,
                "delta_cosine": c,
                "lambda": 0.0 if ld is None else 1.0,
                "lr": 1e-3,
            }
        )

    a.write_text(
        "\n".join([rec(1, 2.0, None, None), rec(2, 99.0, None, None), rec(2, 1.5, None, None), rec(3, 1.0, None, 0.2)])
        + '\n{"step": 4, "loss_wei'
    )
    b.write_text("\n".join(rec(s, 2.0 / s, 0.5 / s, 0.1 * s) for s in range(1, 6)) + "\n")
    return {"weight_only seed 0": a, "delta seed 0": b}


def test_report_tables_targets_figures(tmp_path, logs):
    results = make_results([0.4, 0.6])  # mean 0.50: half of the oracle's +20 gain
    points = np.random.default_rng(0).normal(size=(8, 5))
    labels = ["teacher:math"] * 4 + ["delta:bb_navigate"] * 4
    report = write_report(tmp_path / "run", results, logs=logs, tsne={"points": points, "labels": labels})
    text = report.read_text()
    assert report == tmp_path / "run" / "report.md"
    assert "```\ndeltalora run --config configs/quick.yaml\n```" in text
    for label in LABELS.values():
        assert label in text
    row = next(x for x in text.splitlines() if x.startswith("| Δ-augmented generator |"))
    assert row == "| Δ-augmented generator | 50.0 ± 10.0 | 2 | +10.0 | 50.0 | 0.850 ± 0.000 | 0.300 ± 0.000 |"
    assert "| base model | 40.0 ± 0.0 | 1 | +0.0 | 0.0 | — | — |" in text
    assert "| Δ-augmented generator | 50.0 | 0.850 | 0.300 | 2 |" in text  # summary table
    # Δ-augmented 50 ± 10 over 2 adapters vs weight-only 45: +5 points with a standard error of 7.1 is noise. These
    # results have no per-item scores (as a results.json from before they were recorded): accuracy falls back to the
    # standard error over adapters and says so; Δ-cosine (no items) is bootstrapped over adapters
    assert target_line(text, "a") == (
        "- ❌ **(a)** Δ-augmented beats weight-only on mean accuracy and mean Δ-cosine: "
        "accuracy 50.0 vs 45.0 (difference +5.0 ± 7.1 (s.e. over adapters; items not resampled), within 2 standard "
        "errors), Δ-cosine 0.850 vs 0.400 (difference +0.450, 95 % interval [+0.450, +0.450] (bootstrap over adapters))"
    )
    assert target_line(text, "b").startswith("- ❌") and "50.0 %" in target_line(text, "b")
    assert target_line(text, "c").startswith("- ✅")
    assert target_line(text, "d").startswith("- ❌") and (
        "+8.0 ± 7.1 (s.e. over adapters; items not resampled), within 2 standard errors" in target_line(text, "d")
    )
    assert "| **total** | **42.5** |" in text and "- synthetic" in text
    for name in ("accuracy", "loss", "delta_cosine", "tsne"):
        assert f"![{name}](figures/{name}.png)" in text
        assert (tmp_path / "run" / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results


def test_targets_flip_with_the_data(tmp_path):
    good = summarize(make_results([0.58, 0.58], delta_cos=0.9, random_acc=0.42))["targets"]
    assert good == {
        "delta_beats_weight_only": True,
        "recovers_oracle_gain": True,
        "delta_cosine_to_oracle": True,
        "random_conditions_hurt": True,
    }
    text = write_report(tmp_path, make_results([0.43, 0.43], delta_cos=0.5, random_acc=0.5)).read_text()
    for letter in "abcd":
        assert target_line(text, letter).startswith("- ❌"), letter
    assert "_loss.png skipped: no training logs given._" in text
    assert "_tsne.png skipped: no t-SNE input given._" in text


@pytest.mark.parametrize(
    "delta_accs, beyond",
    [
        ([0.49, 0.50, 0.51], True),  # +5 points, s.e. 0.4: a real difference
        ([0.30, 0.50, 0.70], False),  # same mean, s.e. 8.2: noise
        ([0.50], True),  # one adapter each: no spread to estimate, the sign decides
    ],
)
def test_comparison_targets_need_a_difference_beyond_noise(delta_accs, beyond):
    results = make_results(delta_accs, random_acc=0.45)
    for task in results["tasks"].values():
        task["rows"]["weight_only"]["accuracies"] = [0.45] * (len(delta_accs) if len(delta_accs) > 1 else 1)
    summary = summarize(results)
    assert summary["targets"]["delta_beats_weight_only"] is beyond
    assert summary["targets"]["random_conditions_hurt"] is beyond
    detail = summary["target_details"]["random_conditions_hurt"]["detail"]
    assert ("within 2 standard errors" in detail) is (not beyond) and "difference +5.0" in detail


def test_comparison_target_fails_when_worse_even_without_spread():
    results = make_results([0.40, 0.40], random_acc=0.45)
    summary = summarize(results)
    assert (
        summary["targets"]["delta_beats_weight_only"] is False and summary["targets"]["random_conditions_hurt"] is False
    )


def test_missing_oracle_renders_dash_and_not_measured(tmp_path):
    results = make_results([0.5])
    for task in results["tasks"].values():
        del task["rows"]["oracle"]
        del task["rows"]["delta"]["delta_cosines_specific"]  # results written before the task-specific cosine existed
    summary = summarize(results)
    assert summary["targets"]["recovers_oracle_gain"] is None
    assert summary["rows"]["oracle"] == {
        "accuracy": None,
        "delta_cosine": None,
        "delta_cosine_specific": None,
        "n_tasks": 0,
    }
    text = write_report(tmp_path, results, tsne={"points": np.zeros((3, 4)), "labels": ["a", "b", "c"]}).read_text()
    assert "| held-out task's own teacher (oracle) | — | — | — | — | — | — |" in text
    assert "| Δ-augmented generator | 50.0 ± 0.0 | 1 | +10.0 | — | 0.850 ± 0.000 | — |" in text
    assert target_line(text, "b").startswith("- ➖") and "not measured" in target_line(text, "b")
    assert "_tsne.png skipped: only 3 points" in text


def test_missing_log_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        write_report(tmp_path, make_results([0.5]), logs={"delta seed 0": tmp_path / "nope.jsonl"})
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("key", ["tasks", "rows"])
def test_results_missing_key(tmp_path, key):
    results = make_results([0.5])
    del results[key]
    with pytest.raises(ConfigError, match=repr(key)):
        write_report(tmp_path, results)


def test_log_keeps_last_step_and_skips_torn_line(logs):
    from deltalora.training.logs import read_log

    curves = read_log(logs["weight_only seed 0"])
    assert list(curves) == [1, 2, 3] and curves[2]["loss_weights"] == 1.5


def test_rerender_reproduces_the_report_from_disk(tmp_path, logs):
    run = tmp_path / "run"
    for (arm, seed), src in zip([("weight_only", 0), ("delta", 0)], logs.values()):
        (run / "generators" / arm / f"seed{seed}").mkdir(parents=True)
        (run / "generators" / arm / f"seed{seed}" / "log.jsonl").write_bytes(src.read_bytes())
    tsne = {"points": np.random.default_rng(1).normal(size=(8, 5)), "labels": ["teacher:math"] * 4 + ["oracle:x"] * 4}
    disk_logs = {
        "delta seed 0": run / "generators/delta/seed0/log.jsonl",
        "weight_only seed 0": run / "generators/weight_only/seed0/log.jsonl",
    }
    first = write_report(run, make_results([0.4, 0.6]), logs=disk_logs, tsne=tsne).read_text()
    (run / "report.md").write_text("stale")
    assert rerender(run).read_text() == first
    assert (run / "figures" / "tsne.png").read_bytes().startswith(b"\x89PNG")
    (run / "tsne_input.npz").unlink()  # a run from before the t-SNE input was saved: its figure is kept
    assert rerender(run).read_text() == first and (run / "figures" / "tsne.png").is_file()
    pngs = {f: (run / "figures" / f).read_bytes() for f in ("loss.png", "delta_cosine.png")}
    shutil.rmtree(run / "generators")  # training logs not kept (committed results): the run's curves stay
    assert rerender(run).read_text() == first
    assert all((run / "figures" / f).read_bytes() == png for f, png in pngs.items())


def test_machine_line_only_when_the_run_recorded_it(tmp_path):
    old = write_report(tmp_path / "old", make_results([0.5, 0.52])).read_text()
    assert "Machine" not in old  # a results.json from before the block renders as it always did
    res = make_results([0.5, 0.52])
    res["machine"] = {"description": "Some CPU (AVX2), torch 2.13.0+cpu, 2 threads", "teacher_precision": "float32"}
    new = write_report(tmp_path / "new", res).read_text().splitlines()
    i = new.index("- Backbone: `tiny-qwen2`")
    assert new[i + 1] == "- Machine: Some CPU (AVX2), torch 2.13.0+cpu, 2 threads; teachers trained in float32"
    assert [x for x in new if not x.startswith("- Machine:")] == old.splitlines()


def test_rerender_without_results_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"results.json.*deltalora run"):
        rerender(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        rerender(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_timing_of_a_resumed_run_shows_this_call_and_all_calls(tmp_path):
    results = make_results([0.5])
    results["timing"] = {"load backbone": 2.0, "evaluate": 10.0}
    results["timing_all_calls"] = {"calls": 3, "stages": {"load backbone": 6.0, "zoo build": 100.0, "evaluate": 40.0}}
    text = write_report(tmp_path, results).read_text()
    assert "Resumed: 3 calls wrote into this run directory" in text
    assert "| zoo build | — | 100.0 |" in text and "| evaluate | 10.0 | 40.0 |" in text
    assert "| **total** | **12.0** | **146.0** |" in text
    results["timing_all_calls"] = {"calls": 1, "stages": results["timing"]}  # a single call: one column
    text = write_report(tmp_path, results).read_text()
    assert "Resumed" not in text and "| **total** | **12.0** |" in text


def test_targets_come_from_the_run_config(tmp_path):
    results = make_results([0.4, 0.6])  # (a) +5.0 ± 7.1 points, (b) 50 % of the oracle's gain, (c) Δ-cosine 0.850
    default = write_report(tmp_path / "default", results).read_text()
    results["config"] = {"name": "test"}  # a run config from before the targets were recorded: the defaults
    assert write_report(tmp_path / "old", results).read_text() == default
    results["config"]["targets"] = TargetConfig().model_dump()
    assert write_report(tmp_path / "recorded", results).read_text() == default
    results["config"]["targets"] = {"recovers_oracle_gain": 0.45, "delta_cosine_to_oracle": 0.9, "noise_se": 0.5}
    text = write_report(tmp_path / "custom", results).read_text()
    assert "lower end of the difference's 38 % bootstrap interval (the coverage of ± 0.5 standard errors)" in text
    assert target_line(text, "a").startswith("- ✅") and "within" not in target_line(text, "a")
    assert target_line(text, "b").startswith("- ✅ **(b)** Δ-augmented recovers ≥ 45 % of the oracle's gain over base:")
    assert target_line(text, "c") == "- ❌ **(c)** Δ-augmented mean Δ-cosine to oracle ≥ 0.9: 0.850"
    assert target_line(text, "d").startswith("- ✅")
    assert summarize(results)["targets"] == {
        "delta_beats_weight_only": True,
        "recovers_oracle_gain": True,
        "delta_cosine_to_oracle": False,
        "random_conditions_hurt": True,
    }
    assert summarize(results, TargetConfig())["targets"] == summarize(make_results([0.4, 0.6]))["targets"]
    results["config"]["targets"] = {"noise_se": -1.0}
    with pytest.raises(ConfigError, match=r"targets.*noise_se"):
        write_report(tmp_path / "bad", results)
    assert not (tmp_path / "bad").exists()


def with_item_scores(results: dict, scores: dict[str, list[list[float]]], tasks: int = 2) -> dict:
    """``results`` on its first ``tasks`` held-out tasks, with per-item scores (candidates × items) for the given
    rows, their accuracies recomputed from them, Δ-cosines kept (one per candidate)."""
    results["heldout_tasks"] = results["heldout_tasks"][:tasks]
    results["tasks"] = {t: results["tasks"][t] for t in results["heldout_tasks"]}
    for task in results["tasks"].values():
        task["n_items"] = len(next(iter(scores.values()))[0])
        for row, matrix in scores.items():
            r = task["rows"][row]
            r["item_scores"] = [list(map(float, x)) for x in matrix]
            r["accuracies"] = [sum(x) / len(x) for x in matrix]
            for key in ("delta_cosines", "delta_cosines_specific"):
                r[key] = None if r[key] is None else [r[key][0]] * len(matrix)
    return results


def one_item_apart(n_items: int = 25, n_adapters: int = 3) -> dict[str, list[list[float]]]:
    """Weight-only and random-condition adapters all right on the same 10 of ``n_items``; Δ-augmented adapters on the
    same items plus one: no spread over adapters at all, a one-item difference."""
    same = [1.0] * 10 + [0.0] * (n_items - 10)
    plus_one = [1.0] * 11 + [0.0] * (n_items - 11)
    return {
        "weight_only": [same] * n_adapters,
        "delta_random_condition": [same] * n_adapters,
        "delta": [plus_one] * n_adapters,
    }


def test_a_one_item_difference_is_not_beyond_noise():
    """The demo's case: a one-item difference on 25 items, identical adapters. Over adapters alone its standard error
    is 0 and it passed; resampling the items (the difference rests on one of them) it does not."""
    results = with_item_scores(make_results([0.5]), one_item_apart(), tasks=1)
    summary = summarize(results)
    acc = summary["target_details"]["delta_beats_weight_only"]["accuracy"]
    assert acc["test"] == "items and adapters" and acc["diff"] == pytest.approx(1 / 25)
    assert acc["low"] <= 0 < acc["high"]
    assert summary["targets"]["delta_beats_weight_only"] is False  # Δ-cosine 0.85 vs 0.40 is not what fails it
    assert summary["target_details"]["delta_beats_weight_only"]["delta_cosine"]["low"] > 0
    assert summary["targets"]["random_conditions_hurt"] is False
    assert ", not above 0" in summary["target_details"]["random_conditions_hurt"]["detail"]
    for task in results["tasks"].values():  # the same numbers without per-item scores: the old test passes them
        for r in task["rows"].values():
            r.pop("item_scores", None)
    old = summarize(results)
    assert old["targets"]["delta_beats_weight_only"] is True and old["targets"]["random_conditions_hurt"] is True
    assert (
        "± 0.0 (s.e. over adapters; items not resampled)" in old["target_details"]["random_conditions_hurt"]["detail"]
    )


def test_a_large_consistent_difference_is_beyond_noise(tmp_path):
    n = 25
    rng = np.random.default_rng(7)

    def adapters(right: int) -> list[list[float]]:  # right on the first `right` items, each adapter flips two others
        out = []
        for _ in range(3):
            x = [1.0] * right + [0.0] * (n - right)
            for i in rng.choice(n, size=2, replace=False):
                x[i] = 1.0 - x[i]
            out.append(x)
        return out

    scores = {"weight_only": adapters(6), "delta_random_condition": adapters(5), "delta": adapters(20)}
    results = with_item_scores(make_results([0.5]), scores)
    summary = summarize(results)
    assert (
        summary["targets"]["delta_beats_weight_only"] is True and summary["targets"]["random_conditions_hurt"] is True
    )
    acc = summary["target_details"]["delta_beats_weight_only"]["accuracy"]
    assert 0 < acc["low"] < acc["diff"] < acc["high"]
    line = target_line(write_report(tmp_path, results).read_text(), "a")
    assert line.startswith("- ✅")
    assert (
        f"difference {acc['diff'] * 100:+.1f}, 95 % interval [{acc['low'] * 100:+.1f}, {acc['high'] * 100:+.1f}] "
        "(paired bootstrap over items and adapters)" in line
    )
    assert "items not resampled" not in line and "not above 0" not in line


def test_generators_are_compared_with_weight_only_and_the_mean_merge(tmp_path):
    """Every generator row against the weight-only generator and the mean merge, with the number of standard errors:
    a generator 14 of 25 items ahead is many standard errors above both; one item behind is within noise."""
    n = 25
    scores = {
        "weight_only": [[1.0] * 6 + [0.0] * (n - 6)] * 3,
        "average_merge": [[1.0] * 5 + [0.0] * (n - 5)] * 2,
        "delta": [[1.0] * 20 + [0.0] * (n - 20), [1.0] * 19 + [0.0] * (n - 19), [1.0] * 20 + [0.0] * (n - 20)],
        "mixture": [[1.0] * 5 + [0.0] * (n - 5)] * 3,
        "base": [[1.0] * 4 + [0.0] * (n - 4)],
    }
    results = make_results([0.5])
    for task in results["tasks"].values():
        task["rows"]["mixture"] = dict(task["rows"]["weight_only"])
    results["rows"] = [*ROWS, "mixture"]
    results["generator_rows"] = ["weight_only", "delta", "mixture"]
    results = with_item_scores(results, scores)
    comps = summarize(results)["comparisons"]
    assert set(comps) == {"weight_only", "delta", "mixture"} and set(comps["weight_only"]) == {"average_merge"}
    ahead = comps["delta"]["weight_only"]
    assert ahead["diff"] == pytest.approx((59 / 75) - (6 / 25)) and ahead["beyond_noise"] and ahead["z"] > 4
    assert ahead["z"] == pytest.approx(ahead["diff"] / ahead["se"])
    behind = comps["mixture"]["weight_only"]
    assert behind["diff"] == pytest.approx(-1 / 25) and not behind["beyond_noise"] and -3 < behind["z"] < 0
    text = write_report(tmp_path, results).read_text()
    section = text[text.index("**Generators compared** (held-out tasks") :]
    assert "standard errors" in section and f"{ahead['z']:+.1f} standard errors" in section
    assert "- ❌ mixture vs " in section and "- ✅ " in section
    # the seed criterion "beats the base model on at least one held-out task", per task and generator
    wins = summarize(results)["beats_base"]
    assert wins["delta"]["wins"] == ["bb_navigate", "bb_date"] and wins["mixture"]["wins"] == []
    assert wins["mixture"]["tasks"]["bb_date"]["diff"] == pytest.approx(1 / 25)
    assert "- ❌ mixture: none of 2 tasks (its best: bb_navigate +4.0)" in text
    assert "- ✅ Δ-augmented generator: 2 of 2 tasks: bb_navigate (+62.7), bb_date (+62.7)" in text


def test_retrieval_rows_are_compared_with_the_mean_merge_and_the_multitask_lora(tmp_path):
    """The baseline issue's seed criterion: each retrieval row against the full mean merge and the multi-task LoRA
    (Arrow and the merge itself are not retrieval rows)."""
    n = 25
    scores = {
        "average_merge": [[1.0] * 5 + [0.0] * (n - 5)] * 2,
        "retrieval_delta_avg": [[1.0] * 15 + [0.0] * (n - 15)] * 3,
        "multitask": [[1.0] * 16 + [0.0] * (n - 16)],
        "arrow": [[1.0] * 3 + [0.0] * (n - 3)],
    }
    results = make_results([0.5])
    for task in results["tasks"].values():
        for r in ("retrieval_delta_avg", "multitask", "arrow"):
            task["rows"][r] = dict(task["rows"]["average_merge"])
    results["rows"] = [*ROWS, "retrieval_delta_avg", "multitask", "arrow"]
    results["baseline_rows"] = ["average_merge", "retrieval_delta_avg", "multitask", "arrow"]
    results = with_item_scores(results, scores)
    comps = summarize(results)["retrieval_comparisons"]
    assert set(comps) == {"retrieval_delta_avg"} and set(comps["retrieval_delta_avg"]) == {"average_merge", "multitask"}
    merge, multi = comps["retrieval_delta_avg"]["average_merge"], comps["retrieval_delta_avg"]["multitask"]
    assert merge["diff"] == pytest.approx(10 / 25) and merge["beyond_noise"] and merge["z"] > 2
    assert multi["diff"] == pytest.approx(-1 / 25) and not multi["beyond_noise"]
    text = write_report(tmp_path, results).read_text()
    section = text[text.index("**Retrieval rows compared** (held-out tasks") :]
    assert "- ❌ retrieval_delta_avg vs multitask: 60.0 vs 64.0 (difference -4.0" in section


def test_seen_recovery_is_judged_on_the_best_generator():
    """The fit check holds when any generator row recovers the gain: here the weight-only one, not the Δ-augmented."""
    n = 25

    def row(right: int, k: int) -> dict:
        return {"accuracies": [right / n] * k, "item_scores": [[1.0] * right + [0.0] * (n - right)] * k}

    def task(delta_right: int, weight_right: int) -> dict:
        rows = {"base": row(5, 1), "oracle": row(15, 2), "delta": row(delta_right, 3)}
        rows.update(weight_only=row(weight_right, 3), delta_random_condition=row(5, 3), average_merge=row(8, 1))
        return {"kind": "short", "n_items": n, "rows": rows}

    results = make_results([0.5])
    results["seen_tasks"] = {"s1": task(8, 15), "s2": task(7, 14), "s3": task(9, 16)}
    check = summarize(results)["seen_checks"]["seen_recovers_gain"]
    assert check["ok"] is True and check["row"] == "weight_only" and check["value"] == pytest.approx(1.0)
    assert check["by_row"]["delta"] == pytest.approx(0.3)
    assert "; the other generators: delta 30 %" in check["detail"]
    results["generator_rows"] = ["delta"]  # judged on the Δ-augmented generator alone, it fails
    assert summarize(results)["seen_checks"]["seen_recovers_gain"]["ok"] is False


def test_identical_rows_give_an_interval_around_zero():
    rng = np.random.default_rng(0)
    for shape in [(1, 25), (6, 100), (40, 100)]:
        m = (rng.random(shape) < 0.4).astype(float)
        boot = paired_bootstrap([m, m], [m.copy(), m.copy()], level=0.95)
        assert boot["diff"] == 0 and boot["low"] <= 0 <= boot["high"]


def test_the_interval_is_paired_over_items():
    """One adapter per row, so only items vary: the interval matches the normal one of the mean per-item difference
    (paired: the rows' shared item difficulty cancels), far narrower than if the rows were independent."""
    rng = np.random.default_rng(1)
    hi = (rng.random(400) < 0.6).astype(float)
    lo = hi.copy()
    lo[rng.choice(400, size=40, replace=False)] = 0.0  # the same items, a few of them lost
    boot = paired_bootstrap([hi[None]], [lo[None]], level=0.95, resamples=4000)
    d = hi - lo
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    assert boot["diff"] == pytest.approx(d.mean())
    assert (boot["high"] - boot["low"]) / 2 == pytest.approx(half, rel=0.2)
    assert boot["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(d.size), rel=0.1)  # the bootstrap standard error
    unpaired = 1.96 * np.sqrt(hi.var(ddof=1) / hi.size + lo.var(ddof=1) / lo.size)
    assert (boot["high"] - boot["low"]) / 2 < unpaired / 2


def test_adapters_are_resampled_within_rows():
    """Items identical for every adapter: the interval comes from the spread over adapters, and is wider for a row
    whose adapters disagree."""
    items = np.ones((1, 30))
    steady = paired_bootstrap([np.vstack([items * 0.6] * 6)], [np.vstack([items * 0.4] * 6)])
    spread = paired_bootstrap([np.vstack([items * v for v in (0.2, 1.0, 0.3, 0.9, 0.4, 0.8)])], [items * 0.4])
    assert steady["low"] == pytest.approx(0.2) and steady["high"] == pytest.approx(0.2)
    assert spread["low"] < 0.2 < spread["high"]


def test_the_bootstrap_is_deterministic_given_its_seed():
    rng = np.random.default_rng(2)
    hi = [(rng.random((6, 50)) < p).astype(float) for p in (0.5, 0.3)]
    lo = [(rng.random((6, 50)) < p).astype(float) for p in (0.4, 0.3)]
    first = paired_bootstrap(hi, lo, seed=5)
    assert paired_bootstrap(hi, lo, seed=5) == first
    assert paired_bootstrap(hi, lo, seed=6) != first
    results = with_item_scores(make_results([0.5]), one_item_apart())
    assert summarize(results) == summarize(json.loads(json.dumps(results)))  # the report's seed is fixed


def test_the_interval_coverage_follows_noise_se():
    assert interval_level(2.0) == pytest.approx(0.9545, abs=1e-4) and interval_level(0.0) == 0.0
    rng = np.random.default_rng(3)
    hi, lo = [(rng.random((4, 60)) < 0.55).astype(float)], [(rng.random((4, 60)) < 0.5).astype(float)]
    wide, narrow = paired_bootstrap(hi, lo, level=0.99), paired_bootstrap(hi, lo, level=0.5)
    assert wide["low"] < narrow["low"] <= narrow["high"] < wide["high"]


def test_old_results_without_item_scores_still_render(tmp_path):
    """A results.json from before per-item scores were recorded, or with them on only some tasks, renders with the
    standard error over adapters, and each "beats" line says that items were not resampled."""
    results = with_item_scores(make_results([0.5]), one_item_apart())
    del results["tasks"]["bb_date"]["rows"]["delta"]["item_scores"]
    text = write_report(tmp_path, results).read_text()
    for letter in "ad":
        assert "(s.e. over adapters; items not resampled)" in target_line(text, letter)
    results["tasks"]["bb_date"]["rows"]["delta"]["item_scores"] = [[1.0] * 24] * 3  # not the other rows' items
    assert "items not resampled" in target_line(write_report(tmp_path, results).read_text(), "a")


def test_ablation_table_lines():
    row = {
        "variant": "lam=0",
        "factor": "λ",
        "value": 0.0,
        "tail_loss_weights": 1.00031,
        "tail_train_delta_cosine": None,
        "train_seconds": 56.2,
        "heldout_delta_cosine_mean": 0.3121,
        "heldout_delta_cosine_std": 0.1744,
        "heldout_specific_cosine_mean": -0.0411,
        "heldout_specific_cosine_std": 0.109,
        "heldout_accuracy_mean": 0.4567,
        "seconds": 4.2,
    }
    assert ablation_table([row, {**row, "variant": "centre", "factor": "-", "heldout_accuracy_mean": None}]) == [
        "| variant | factor | L_weights | train Δ-cos | held-out Δ-cos to oracle | held-out task-specific Δ-cos "
        "| held-out accuracy | training s | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
        "| lam=0 | λ | 1.0003 | — | 0.312 ± 0.174 | -0.041 ± 0.109 | 45.7 | 56.2 | 4.2 |",
        "| centre | - | 1.0003 | — | 0.312 ± 0.174 | -0.041 ± 0.109 | — | 56.2 | 4.2 |",
        "",
    ]


def test_seen_checks_judge_recovery_and_random_conditions(tmp_path):
    """The seen-task section's two checks: median share of the own teachers' gain (≥ 90 % by default) and random
    conditions losing accuracy beyond noise (paired bootstrap), on the seen block alone."""
    n = 25

    def rows(delta_right: int, random_right: int, oracle_right: int = 15) -> dict:
        def row(right: int, k: int) -> dict:
            m = [[1.0] * right + [0.0] * (n - right) for _ in range(k)]
            return {
                "accuracies": [right / n] * k,
                "item_scores": m,
                "delta_cosines": None if k == 1 and right == 5 else [0.5] * k,
                "delta_cosines_specific": None if k == 1 and right == 5 else [0.1] * k,
            }

        out = {r: row(5, 1) for r in ("base",)}  # base: 5 of 25
        out.update(oracle=row(oracle_right, 2), delta=row(delta_right, 3), weight_only=row(delta_right, 3))
        out.update(delta_random_condition=row(random_right, 3), average_merge=row(8, 1))
        return {"kind": "short", "n_items": n, "rows": out}

    results = make_results([0.5])
    # recovers 100 %, 90 % and 50 % of the own teachers' gain (15 − 5 = 10 items): median 90 %
    results["seen_tasks"] = {"s1": rows(15, 5), "s2": rows(14, 5), "s3": rows(10, 5)}
    summary = summarize(results)
    checks = summary["seen_checks"]
    assert checks["seen_recovers_gain"]["ok"] is True and checks["seen_recovers_gain"]["value"] == pytest.approx(0.9)
    assert checks["seen_random_conditions_hurt"]["ok"] is True
    acc = checks["seen_random_conditions_hurt"]["accuracy"]
    assert acc["test"] == "items and adapters" and acc["low"] > 0
    text = write_report(tmp_path, results).read_text()
    section = text[text.index("### Fit checks") :]
    assert "- ✅ A generator's adapters recover ≥ 90 % of the own teachers' gain" in section
    assert "median 90 % over 3 seen tasks (s1 100 %, s2 90 %, s3 50 %)" in section
    # the same prompts as random conditions: no loss, and a weaker generator fails the recovery check
    results["seen_tasks"] = {"s1": rows(10, 10), "s2": rows(9, 9)}
    checks = summarize(results)["seen_checks"]
    assert checks["seen_recovers_gain"]["ok"] is False and checks["seen_random_conditions_hurt"]["ok"] is False
    assert "not above 0" in checks["seen_random_conditions_hurt"]["detail"]
    # a run without seen tasks has no checks and no section
    del results["seen_tasks"]
    assert summarize(results)["seen_checks"] == {}
    assert "### Fit checks" not in write_report(tmp_path, results).read_text()


def _aligned(cos: list[float], gains: list[float], tasks: int = 3) -> dict:
    """``tasks`` tasks with one generated row whose adapters have these Δ-cosines and accuracy gains over base 0.4."""
    rows = {
        "base": {"accuracies": [0.4]},
        "oracle": {"accuracies": [0.9], "delta_cosines": [1.0], "delta_cosines_specific": [1.0]},
        "delta": {
            "accuracies": [0.4 + g for g in gains],
            "delta_cosines": cos,
            "delta_cosines_specific": [c - 0.5 for c in cos],
        },
    }
    return {"tasks": {f"t{i}": {"rows": rows} for i in range(tasks)}}


def test_alignment_finds_a_monotone_relation_and_not_a_shuffled_one():
    from deltalora.experiment.stats import alignment, spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 1, 2, 3]) == pytest.approx(1.0)  # ties at their mean rank
    cos = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    up = alignment(_aligned(cos, [0.00, 0.01, 0.03, 0.04, 0.06, 0.07, 0.09, 0.10]))
    assert up["n_adapters"] == 24 and up["n_tasks"] == 3  # the oracle and base are left out
    for key in ("raw", "specific"):
        assert up[key]["spearman"] == pytest.approx(1.0) and up[key]["within_task_spearman"] == pytest.approx(1.0)
        assert up[key]["correlates"] is True and up[key]["spearman_interval"][0] > 0
    flat = alignment(_aligned(cos, [0.05, -0.02, 0.08, 0.0, 0.01, 0.07, -0.01, 0.03]))
    assert flat["raw"]["correlates"] is False and abs(flat["raw"]["spearman"]) < 0.5
    assert alignment(_aligned([0.1], [0.0], tasks=2)) is None  # fewer than 3 adapters


def test_report_states_the_alignment_criterion(tmp_path):
    res = make_results([0.50, 0.52])
    res["tasks"]["bb_navigate"]["rows"]["delta"]["accuracies"] = [0.50, 0.52]
    write_report(tmp_path, res)
    text = (tmp_path / "report.md").read_text()
    assert "**Δ alignment vs accuracy** (held-out tasks;" in text and "Spearman ρ" in text


def test_report_names_the_probes_of_its_delta_cosine_columns(tmp_path):
    res = make_results([0.50, 0.52])
    write_report(tmp_path / "none", res)
    assert "Every Δ-cosine column is measured on probes" not in (tmp_path / "none" / "report.md").read_text()
    res["config"] = {"name": "t", "train": {"probes": "task:train:8", "representation": "mean"}}
    write_report(tmp_path / "task", res)
    text = (tmp_path / "task" / "report.md").read_text()
    assert "measured on probes `task:train:8` (each task's own train prompts), representation `mean`" in text
