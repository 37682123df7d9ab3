"""The held-out experiment end to end on tiny-qwen2 (`deltalora run`), its candidates, the ablation runner,
`deltalora train` resuming after kill -9, and the shipped run configs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from deltalora.backbones import cpu_info
from deltalora.conditions import ConditionPool
from deltalora.config import parse_overrides
from deltalora.deltas.forward import DeltaProbe
from deltalora.errors import ConfigError
from deltalora.experiment import RunConfig, load_ablation_config, load_run_config, run_experiment
from deltalora.experiment.ablate import run_ablation
from deltalora.experiment.candidates import average_merge, random_conditions
from deltalora.experiment.config import (
    BaselineConfig,
    CompareGenerator,
    SeenConfig,
    load_compose_config,
    load_scaling_config,
    zoo_config,
)
from deltalora.experiment.run import prepare
from deltalora.generators.checkpoint import read_checkpoint_metadata
from deltalora.lora import LoraWeights, derive_layout
from deltalora.lora.merge import merge_adapters
from deltalora.retrieval import RetrievalIndex
from deltalora.tasks import load_suite
from deltalora.training import product_sq_norm
from deltalora.training.data import components
from deltalora.training.logs import read_log, tail_mean
from deltalora.training.loop import fingerprint
from deltalora.zoo import load_zoo_config
from deltalora.zoo.build import resolved_config, zoo_precision
from tests.helpers import SPEC

TINY = Path("tests/fixtures/run/tiny.yaml")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_qwen2):
    out = tmp_path_factory.mktemp("run") / "tiny"
    cfg = load_run_config(TINY)
    report = run_experiment(cfg, out, progress=False, backbone=tiny_qwen2)
    return cfg, out, report


def test_run_reports_every_row_for_the_heldout_task(tiny_run):
    cfg, out, report = tiny_run
    res = json.loads((out / "results.json").read_text())
    assert res["heldout_tasks"] == ["pick"] and "pick" not in res["train_tasks"]
    rows = res["tasks"]["pick"]["rows"]
    baselines = {"retrieval_delta_avg", "retrieval_delta_ties", "retrieval_condition_avg", "multitask", "arrow"}
    assert (
        set(rows)
        == {
            "base",
            "average_merge",
            "weight_only",
            "delta",
            "mixture",
            "oracle",
            "delta_random_condition",
        }
        | baselines
    )
    assert res["rows"].index("mixture") == res["rows"].index("delta") + 1  # compare's rows follow the Δ-augmented one
    assert res["row_labels"]["mixture"] == "mixture generator (λ=0)"
    n_gen = len(cfg.seeds) * cfg.adapters_per_seed
    assert [
        len(rows[r]["accuracies"])
        for r in ("base", "average_merge", "weight_only", "delta", "mixture", "delta_random_condition")
    ] == [1, 1, n_gen, n_gen, n_gen, n_gen]
    mix = read_checkpoint_metadata(out / "generators" / "mixture" / "seed0" / "generator.safetensors")
    assert mix["generator"]["name"] == "mixture" and mix["extra"]["train_config"]["lam"]["target"] == 0.0
    assert len(rows["oracle"]["accuracies"]) == 2 * 2  # pick's 2 seeds x 2 tail checkpoints
    assert all(0 <= a <= 1 for r in rows.values() for a in r["accuracies"])
    assert all(-1 <= c <= 1 for name, r in rows.items() if name != "base" for c in r["delta_cosines"])
    assert min(rows["oracle"]["delta_cosines"]) > 0.5  # each own teacher vs the mean of them
    for name, r in rows.items():  # the training teachers' mean Δ projected out: one value per adapter, a cosine
        if name not in ("base", "arrow"):  # Arrow routes per token: no single adapter to probe
            assert len(r["delta_cosines_specific"]) == len(r["accuracies"])
            assert all(-1 <= c <= 1 for c in r["delta_cosines_specific"])
    assert rows["delta"]["delta_cosines_specific"] != rows["delta"]["delta_cosines"]
    n_items = res["tasks"]["pick"]["n_items"]
    for r in rows.values():  # per candidate, its per-item scores: what the report's paired bootstrap resamples
        assert len(r["item_scores"]) == len(r["accuracies"])
        for acc, items in zip(r["accuracies"], r["item_scores"]):
            assert len(items) == n_items and sum(items) / n_items == pytest.approx(acc)
    text = report.read_text()
    for letter in "ad":  # the "beats" targets: judged over eval items and adapters, the interval printed
        (line,) = [x for x in text.splitlines() if f"**({letter})**" in x]
        assert "% interval [" in line and "paired bootstrap over items and adapters" in line
        assert "items not resampled" not in line
    for label in res["row_labels"].values():
        assert label in text
    # where it ran and what the teachers trained in: recorded, and named in the report
    machine, want = res["machine"], zoo_precision(zoo_config(cfg))
    assert machine["teacher_precision"] == want.name and machine["teacher_precision_reason"] == want.reason
    assert machine["cpu"] == cpu_info() and machine["device"] == "cpu"
    assert f"- Machine: {machine['description']}; teachers trained in {want.name}" in text.splitlines()
    assert (out / "figures" / "tsne.png").exists() and (out / "figures" / "loss.png").exists()
    # the targets the report judged against are recorded with the run config (the defaults: the old constants)
    assert res["config"]["targets"] == {
        "recovers_oracle_gain": 0.8,
        "delta_cosine_to_oracle": 0.8,
        "noise_se": 2.0,
        "seen_recovers_gain": 0.9,  # the seen-task fit check
    }


def test_seen_tasks_are_scored_like_heldout_tasks(tiny_run):
    """Every training task with its own teachers (fewer than seen.tasks asks for), scored with the held-out rows."""
    cfg, out, report = tiny_run
    res = json.loads((out / "results.json").read_text())
    assert list(res["seen_tasks"]) == ["colours", "double"] == sorted(set(res["train_tasks"]))
    heldout_rows = res["tasks"]["pick"]["rows"]
    n_gen = len(cfg.seeds) * cfg.adapters_per_seed
    for task, entry in res["seen_tasks"].items():
        assert set(entry) == set(res["tasks"]["pick"]) and entry["n_items"] == 4  # the task's whole eval split
        rows = entry["rows"]
        assert set(rows) == set(heldout_rows)
        assert all(set(rows[r]) == set(heldout_rows[r]) for r in rows)  # same shape as the held-out block
        assert [len(rows[r]["accuracies"]) for r in ("base", "average_merge", "delta", "delta_random_condition")] == [
            1,
            1,
            n_gen,
            n_gen,
        ]
        oracle = rows["oracle"]
        assert len(oracle["arms"]) == 4 and all(a.startswith(f"oracle/{task}/") for a in oracle["arms"])  # its own
        assert min(oracle["delta_cosines"]) > 0.5  # 2 seeds x 2 tail checkpoints of the task, vs their mean
    text = report.read_text()
    seen = text[text.index("## Seen tasks") : text.index("## Generator fit")]
    assert "### colours" in seen and "### double" in seen and "### Summary over seen tasks" in seen
    assert "### Fit checks" in seen and "loses accuracy with random conditions on seen tasks" in seen
    assert res["seen_row_labels"]["oracle"] in seen and "- Seen tasks (2): colours, double" in text


def test_baselines_are_rows_built_from_training_teachers_only_and_set_the_floor(tiny_run):
    cfg, out, report = tiny_run
    res = json.loads((out / "results.json").read_text())
    b = cfg.baselines
    assert res["baseline_rows"] == ["average_merge", *b.retrieval, "multitask", "arrow"]
    assert res["generator_rows"] == ["weight_only", "delta", "mixture"]
    assert res["rows"][res["rows"].index("average_merge") + 1] == "retrieval_delta_avg"
    for block in (res["tasks"], res["seen_tasks"]):
        for entry in block.values():
            rows = entry["rows"]
            for name in b.retrieval:  # one retrieved merge per seed and condition
                assert len(rows[name]["accuracies"]) == len(cfg.seeds) * b.adapters_per_seed
                assert len(rows[name]["delta_cosines"]) == len(rows[name]["accuracies"])
            assert rows["multitask"]["arms"] == ["multitask/s0"] and len(rows["multitask"]["delta_cosines"]) == 1
            assert rows["arrow"]["arms"] == ["arrow"] and rows["arrow"]["delta_cosines"] == []
    # the predictor and index know only the training teachers; the held-out task is never retrieved
    for seed in cfg.seeds:
        index = RetrievalIndex.load(out / "retrieval" / f"index-s{seed}.safetensors")
        assert index.ids and not any(i.startswith("pick/") for i in index.ids)
        assert set(index.groups) == {"colours", "double", "colours+double"}  # the mixed teacher is a training one
    info = res["baselines"]
    assert set(info["predictor"]) == {"0", "1"} and info["predictor"]["0"]["steps"] == 20
    assert set(info["predictor_cosine"]["heldout"]) == {"pick"}
    assert -1 <= info["predictor_cosine"]["heldout"]["pick"] <= 1
    assert info["multitask"]["0"]["tasks"] == 2 and info["arrow"]["experts"] == ["colours/s0/step4", "double/s0/step4"]
    text = report.read_text()
    assert "**The floor** (held-out tasks): the best baseline is" in text
    assert "**The floor** (seen tasks)" in text and "Δ-augmented generator vs the floor:" in text
    for label in ("Δ-retrieval, top 2 + ties merge", "multi-task LoRA", "Arrow routing (PEFT, top 2"):
        assert label in text
    section = text[text.index("## Baselines") : text.index("## Generator fit")]
    assert "Δ predictor (task-specific Δ, 20 steps): training cosine seed 0 " in section
    assert "held-out tasks' own teachers (task-specific Δ-cosine): pick " in section
    assert "Arrow: top 2 of 2 experts" in section and "Multi-task LoRA (zoo seed 0): 2 training tasks" in section


def test_report_prints_each_generators_fit(tiny_run):
    """Floor and tail L_weights from each variant's training, ΔW cosine of seen-task adapters to their teachers."""
    cfg, out, report = tiny_run
    res = json.loads((out / "results.json").read_text())
    fit = res["fit"]
    assert list(fit) == ["weight_only", "delta", "mixture", "oracle"]
    for v in cfg.variants:
        d = out / "generators" / v / "seed0"
        assert fit[v]["weight_loss_floor"] == pytest.approx(
            json.loads((d / "fit.json").read_text())["weight_loss_floor"]
        )
        logs = [read_log(out / "generators" / v / f"seed{s}" / "log.jsonl") for s in cfg.seeds]
        tails = [tail_mean(log, "loss_weights") for log in logs]
        assert fit[v]["tail_weight_loss"] == pytest.approx(sum(tails) / len(tails))
        assert -1 <= fit[v]["seen_dw_cosine"] <= 1
    assert fit["oracle"]["seen_dw_cosine"] > 0.5  # own teachers vs their mean
    # the mixture starts as the library's average, so its adapters already point where the teachers do
    assert fit["mixture"]["seen_dw_cosine"] > fit["weight_only"]["seen_dw_cosine"]
    text = report.read_text()
    section = text[text.index("## Generator fit") : text.index("## Timing")]
    for v in cfg.variants:
        assert res["row_labels"][v] in section
    assert f"{fit['mixture']['tail_weight_loss']:.3f}" in section


def test_training_conditions_never_draw_the_seen_tasks_held_back_prompts(tiny_run, tiny_qwen2):
    cfg, out, _ = tiny_run
    ctx = prepare(cfg, out, progress=False, backbone=tiny_qwen2)
    form = cfg.train.condition_form
    assert ctx.train_set.conditioner is ctx.conditioner and ctx.seen == ["colours", "double"]
    for task in ctx.train_set.tasks:  # every training task's pool is split, not only the seen tasks'
        whole = ConditionPool.from_task(ctx.tasks[task])
        kept = ctx.conditioner.texts[task]
        assert ctx.conditioner.pools[task].part.startswith("kept") and 0 < len(kept) < len(whole)
        if task in ctx.seen:
            back = ctx.seen_conditioner.texts[task]
            assert back and not set(kept) & set(back) and sorted(kept + back) == sorted(whole.texts(form))
    assert ctx.conditioner.pools["pick"].part is None  # the held-out task keeps its whole pool
    assert len(ctx.conditioner.pools["pick"]) == len(ctx.tasks["pick"].condition)
    back = torch.cat([ctx.seen_conditioner.embeddings[t] for t in ctx.seen])
    for epoch in range(cfg.train.steps):
        for i, e in enumerate(ctx.train_set.entries):
            for row in ctx.train_set.example(i, epoch).condition:
                assert not torch.isclose(back, row).all(1).any()
            texts = ctx.conditioner.sample_texts(components(e), seed=ctx.train_set.seed, epoch=epoch, key=e.id)
            assert not set(texts) & {t for s in ctx.seen for t in ctx.seen_conditioner.texts[s]}
    # the split is a function of (task, seed): prepared again, the same parts; with the section off, whole pools
    # and another training fingerprint, so generators trained on whole pools are never reused for seen tasks
    again = prepare(cfg, out, progress=False, backbone=tiny_qwen2)
    assert (
        again.conditioner.texts == ctx.conditioner.texts and again.seen_conditioner.texts == ctx.seen_conditioner.texts
    )
    off = prepare(cfg.model_copy(update={"seen": SeenConfig(tasks=0)}), out, progress=False, backbone=tiny_qwen2)
    assert off.seen == [] and off.seen_conditioner is None and off.train_set.condition_parts == {}
    arm = cfg.arm_config("delta", 0)
    assert fingerprint(arm, off.train_set, 1) != fingerprint(arm, ctx.train_set, 1)


def test_heldout_task_never_reaches_generator_training(tiny_run):
    _, out, _ = tiny_run
    for variant in ("weight_only", "delta"):
        for seed in (0, 1):
            meta = read_checkpoint_metadata(out / "generators" / variant / f"seed{seed}" / "generator.safetensors")
            assert meta["extra"]["heldout"] == ["pick"]
            assert meta["extra"]["train_ids"] and not any(i.startswith("pick") for i in meta["extra"]["train_ids"])
    wo = [json.loads(x) for x in (out / "generators/weight_only/seed0/log.jsonl").read_text().splitlines()]
    de = [json.loads(x) for x in (out / "generators/delta/seed0/log.jsonl").read_text().splitlines()]
    assert all(r["loss_delta"] is None for r in wo) and any(r["loss_delta"] is not None for r in de)


def test_rerun_reuses_every_stage(tiny_run, tiny_qwen2, monkeypatch):
    from deltalora.experiment import merge_cache

    cfg, out, _ = tiny_run
    gen = (out / "generators/delta/seed1/generator.safetensors").read_bytes()
    evals = sorted(p.name for p in (out / "eval").rglob("*.json"))
    before = json.loads((out / "results.json").read_text())["tasks"]
    assert any((out / "merges").iterdir())  # the TIES retrieval row's merges, kept
    merged = []
    monkeypatch.setattr(merge_cache, "merge_adapters", lambda *a, **k: merged.append(a[2]) or merge_adapters(*a, **k))
    probed = []
    real_call = DeltaProbe.__call__
    monkeypatch.setattr(DeltaProbe, "__call__", lambda self, *a, **k: probed.append(1) or real_call(self, *a, **k))
    run_experiment(cfg, out, progress=False, backbone=tiny_qwen2)
    assert "ties" not in merged and "avg" in merged  # the dense merges read back; the cheap ones merged again
    assert probed == []  # every candidate's Δ read back from the run's Δ cache (its cosines below are unchanged)
    assert (out / "generators/delta/seed1/generator.safetensors").read_bytes() == gen
    assert sorted(p.name for p in (out / "eval").rglob("*.json")) == evals
    assert json.loads((out / "results.json").read_text())["tasks"] == before


def test_the_run_trains_its_multitask_lora_before_it_loads_anything_else(tmp_path, tiny_qwen2, monkeypatch):
    """The multi-task LoRA trains right after the zoo stage (its ~10 GB of activations on the 0.5B backbone once met
    the loaded generators and went past 24 GiB), on exactly the training tasks; the baseline stage reads it back."""
    from deltalora.experiment import baselines
    from deltalora.experiment import run as run_mod

    built, at_delta_stage = [], []
    real_stage, real_build = run_mod.teacher_delta_stage, baselines.build_multitask

    def spy_stage(cfg, zoo_cfg, backbone, zoo_dir, *a, **k):
        at_delta_stage.append(sorted(p.name for p in (Path(zoo_dir) / "multitask").glob("[!.]*")))
        return real_stage(cfg, zoo_cfg, backbone, zoo_dir, *a, **k)

    def spy_build(zoo_dir, cfg, tasks, **k):
        mt = real_build(zoo_dir, cfg, tasks, **k)
        built.append((list(tasks), mt.path))
        return mt

    monkeypatch.setattr(run_mod, "teacher_delta_stage", spy_stage)
    monkeypatch.setattr(baselines, "build_multitask", spy_build)
    ctx = prepare(load_run_config(TINY), tmp_path / "run", progress=False, backbone=tiny_qwen2)
    assert len(at_delta_stage) == 1 and len(at_delta_stage[0]) == 1  # trained before the teacher-Δ stage
    training = sorted({e.task for e in ctx.train_set.entries if not e.mixed})
    assert built and built[0][0] == training and "pick" not in training
    mtime = built[0][1].stat().st_mtime_ns
    base = baselines.prepare_baselines(ctx, [ctx.train_set.example(i, 0) for i in range(len(ctx.train_set))])
    assert list(base.multitask) == ["multitask/s0"]
    assert built[-1] == built[0] and built[-1][1].stat().st_mtime_ns == mtime  # read back, not trained again


def test_a_run_with_task_probes_matches_each_teachers_behaviour_on_its_own_task(tiny_qwen2, tmp_path):
    """train.probes: task:train:N — teacher Δ, the Δ loss and the report's Δ-cosines all on each task's own prompts."""
    cfg = load_run_config(TINY)
    cfg = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(update={"probes": "task:train:4"}),
            "seeds": [0],
            "compare": {
                "b1": CompareGenerator(
                    generator="compact",
                    generator_options={"trunk_width": 32, "head_hidden": 16, "basis_dim": 4},
                    train={
                        "weight_scale": 0.0,
                        "lam": {"target": 1.0},
                        "kl": {"target": 0.5},
                        "kl_probes": "task:train:4",
                        "kl_answer_tokens": 4,
                        "norm_penalty": 0.1,
                    },
                ),
                # the held-out preset's behaviour arm: the mixture, its behaviour losses on other task probes than
                # the run's, for one teacher per step and only in the last steps
                "behaviour": CompareGenerator(
                    generator="mixture",
                    generator_options={"trunk_width": 16},
                    train={
                        "probes": "task:train:2",
                        "delta_batch": 1,
                        "lam": {"target": 1.0, "warmup_steps": 4},
                        "kl": {"target": 0.5, "warmup_steps": 4},
                        "kl_probes": "task:train:2",
                        "kl_answer_tokens": 4,
                    },
                ),
            },
            "baselines": BaselineConfig(),
            "seen": SeenConfig(tasks=1),
        }
    )
    out = tmp_path / "run"
    run_experiment(cfg, out, progress=False, backbone=tiny_qwen2)
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["train"]["probes"] == "task:train:4"
    index = [json.loads(x) for x in (out / "deltas" / "index.jsonl").read_text().splitlines()]
    by_id: dict[str, set] = {}
    for r in index:
        by_id.setdefault(r["adapter"], set()).add(r["probes"])
    # the run's task probes, and the behaviour arm's (2 prompts), each on the teacher's own task
    assert by_id["pick/s0/step4"] == {"task:pick:train:4", "task:pick:train:2"}
    mixed = by_id["colours+double/s0/step4"]  # a mixed teacher: both tasks' prompts
    assert mixed == {"task:colours+double:train:4", "task:colours+double:train:2"}
    log = read_log(out / "generators" / "delta" / "seed0" / "log.jsonl")
    assert any(r.get("loss_delta") is not None for r in log.values())
    rows = res["tasks"]["pick"]["rows"]
    assert all(-1 <= c <= 1 for c in rows["delta"]["delta_cosines"]) and min(rows["oracle"]["delta_cosines"]) > 0.5
    # B1 (Δ-only with the KL tether and a norm penalty) is a variant with a row of its own
    b1 = list(read_log(out / "generators" / "b1" / "seed0" / "log.jsonl").values())
    assert all(r["loss_kl"] is not None and r["weight_norm"] is not None for r in b1)
    assert len(rows["b1"]["accuracies"]) == cfg.adapters_per_seed
    assert res["row_labels"]["b1"].startswith("compact generator (weight_scale=0.0, lam.target=1.0, kl.target=0.5")
    late = read_log(out / "generators" / "behaviour" / "seed0" / "log.jsonl")
    assert (
        [s for s, r in late.items() if r["loss_delta"] is not None]
        == [4, 5]
        == [s for s, r in late.items() if r["loss_kl"] is not None]
    )
    assert len(rows["behaviour"]["accuracies"]) == cfg.adapters_per_seed


def test_a_killed_eval_keeps_the_candidates_already_scored(tiny_run, tiny_qwen2, tmp_path, monkeypatch):
    """Held-out candidates are scored a few per call and cached as each call ends: a kill mid-eval loses one call's
    work."""
    from deltalora.experiment import run as run_module

    cfg, out, _ = tiny_run
    copy = tmp_path / "tiny"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "eval")
    ledger = json.loads((copy / "timing.json").read_text())
    n_candidates = sum(1 for _ in (out / "eval").rglob("*.json"))
    assert n_candidates > 2 * run_module.CANDIDATES_PER_EVAL_CALL  # several calls' worth
    real, calls = run_module.evaluate_task, []

    def killed_on_second_call(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate_task", killed_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, copy, progress=False, backbone=tiny_qwen2)
    kept = {p: p.read_bytes() for p in (copy / "eval").rglob("*.json")}
    assert len(kept) == run_module.CANDIDATES_PER_EVAL_CALL
    monkeypatch.setattr(run_module, "evaluate_task", real)
    run_experiment(cfg, copy, progress=False, backbone=tiny_qwen2)
    assert sum(1 for _ in (copy / "eval").rglob("*.json")) == n_candidates
    assert all(p.read_bytes() == b for p, b in kept.items())  # reused, not rescored
    # the report times the work of every call into the run directory, the killed call's finished eval call included
    res = json.loads((copy / "results.json").read_text())
    after = json.loads((copy / "timing.json").read_text())
    assert res["timing_all_calls"] == after and after["calls"] == ledger["calls"] + 2
    assert after["stages"]["evaluate"] > ledger["stages"]["evaluate"] + res["timing"]["evaluate"]
    assert f"Resumed: {after['calls']} calls" in (copy / "report.md").read_text()


def test_eval_cache_keys_a_score_by_content_and_settings(tiny_qwen2, tmp_path):
    from deltalora.experiment.config import EvalConfig
    from deltalora.experiment.eval_cache import EvalCache

    cache = EvalCache(tmp_path, "pick", EvalConfig(limit=6), tiny_qwen2)
    # float32 scores keep the keys of every run before the precision option: the base model's is the salt's hash
    assert cache.salt == f"pick|eval|6|{tiny_qwen2.weights_id}"
    assert cache.key(None) == hashlib.sha256(cache.salt.encode()).hexdigest()[:32]
    assert cache.get(cache.key(None)) is None
    cache.put(cache.key(None), {"accuracy": 0.5, "kind": "mc", "scores": [1.0, 0.0]})
    assert cache.get(cache.key(None)) == {"accuracy": 0.5, "kind": "mc", "scores": [1.0, 0.0]}
    assert (tmp_path / "eval" / "pick" / f"{cache.key(None)}.json").is_file()
    # an entry cached before per-item scores were kept is a miss: the candidate is scored again
    cache.put(cache.key(None), {"accuracy": 0.5, "kind": "mc"})
    assert cache.get(cache.key(None)) is None
    for other in (
        EvalCache(tmp_path, "pick", EvalConfig(limit=6, precision="bfloat16"), tiny_qwen2),
        EvalCache(tmp_path, "pick", EvalConfig(limit=7), tiny_qwen2),
        EvalCache(tmp_path, "other", EvalConfig(limit=6), tiny_qwen2),
    ):
        assert other.key(None) != cache.key(None) and other.get(other.key(None)) is None


def test_a_corrupt_timing_ledger_is_a_one_line_error(tiny_run, tiny_qwen2, tmp_path):
    cfg, out, _ = tiny_run
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "timing.json").write_text('{"calls": 2')
    with pytest.raises(ConfigError, match=r"timing.json: not a timing ledger .*delete it"):
        run_experiment(cfg, tmp_path / "r", progress=False, backbone=tiny_qwen2)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["timing.json"]  # nothing built, nothing overwritten


def test_average_merge_is_the_mean_weight_update(tiny_qwen2):
    layout = derive_layout(tiny_qwen2.arch, SPEC)
    ts = [LoraWeights.random(layout, std=0.1, seed=s) for s in range(3)]
    merged = average_merge(ts)
    assert merged.layout.spec.rank == 3 * SPEC.rank and merged.layout.scale == 1.0
    for k in merged.A:
        mean = sum(layout.scale * t.B[k] @ t.A[k] for t in ts) / 3
        assert torch.allclose(merged.B[k] @ merged.A[k], mean, atol=1e-6)
    assert product_sq_norm(LoraWeights.stack([merged])).item() > 0


def test_random_conditions_have_the_real_row_norm():
    like = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    r = random_conditions(like, 3, seed=0)
    assert r.shape == (3, 5, 16) and torch.allclose(r.norm(dim=-1), torch.ones(3, 5), atol=1e-5)
    assert torch.equal(r, random_conditions(like, 3, seed=0)) and not torch.equal(r, random_conditions(like, 3, seed=1))


def test_ablation_sweeps_one_factor_at_a_time(tmp_path, tiny_qwen2):
    cfg = load_ablation_config("tests/fixtures/run/ablate.yaml")
    md = run_ablation(cfg, tmp_path / "ab", progress=False, backbone=tiny_qwen2)
    rows = json.loads((tmp_path / "ab" / "ablation.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == [
        "centre",
        "lam=0",
        "kl=0.5",
        "probes=neutral24",
        "representation=mean",
        "delta_loss=cosine",
        "weight_scale=0.0",
        "norm_penalty=0.1",
    ]
    assert all(-1 <= r["heldout_delta_cosine_mean"] <= 1 for r in rows)
    assert all(-1 <= r["heldout_specific_cosine_mean"] <= 1 for r in rows)
    assert rows[1]["tail_train_delta_cosine"] is None  # λ = 0 never runs the probe forward
    for r in rows:  # the tail mean and the training time come from the variant's own log
        curves = read_log(tmp_path / "ab" / r["variant"] / "log.jsonl")
        logged = sum(c["step_seconds"] for c in curves.values())
        assert logged > 0 and r["train_seconds"] == round(logged, 1)
        assert r["tail_loss_weights"] == tail_mean(curves, "loss_weights")
    assert "probes=neutral24" in md.read_text()
    b1 = read_log(tmp_path / "ab" / "weight_scale=0.0" / "log.jsonl")  # B1: Δ-only, the weight loss scaled to 0
    assert json.loads((tmp_path / "ab" / "weight_scale=0.0" / "train_config.json").read_text())["weight_scale"] == 0
    assert all(r.get("loss_delta") is not None for r in list(b1.values())[-2:])
    kl = read_log(tmp_path / "ab" / "kl=0.5" / "log.jsonl")
    assert any(r.get("loss_kl") is not None for r in kl.values())


def test_run_config_errors(tmp_path):
    base = yaml.safe_load(TINY.read_text())
    for change, match in (
        ({"heldout": [], "heldout_count": 0}, "exactly one of"),
        ({"heldout_count": 1}, "exactly one of"),
        ({"train": {**base["train"], "lam": {"target": 0.0}}}, "train.lam.target must be > 0"),
        ({"targets": {"delta_cosine_to_oracle": 1.5}}, "targets.delta_cosine_to_oracle"),
        ({"targets": {"recover": 0.5}}, "targets.recover"),
    ):
        p = tmp_path / "bad.yaml"
        p.write_text(yaml.safe_dump({**base, **change, "zoo": str(Path("tests/fixtures/zoo/tiny.yaml").resolve())}))
        with pytest.raises(ConfigError, match=match):
            load_run_config(p)


def test_set_overrides_one_key_and_keeps_the_rest():
    base = load_run_config(TINY)
    cfg = load_run_config(TINY, parse_overrides(["train.delta_loss=specific_cosine", "seeds=[3]", "eval.limit=2"]))
    assert (cfg.train.delta_loss, cfg.seeds, cfg.eval.limit) == ("specific_cosine", [3], 2)
    assert cfg.train.model_copy(update={"delta_loss": base.train.delta_loss}) == base.train  # the rest of train kept
    assert cfg.eval.batch_rows == base.eval.batch_rows
    for bad, match in (
        (["train.delta_loss"], "KEY=VALUE"),
        (["train..lr=1"], "KEY=VALUE"),
        (["seeds=[1"], "not valid YAML"),
        (["seeds=1", "seeds.x=2"], "cannot also hold keys"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_overrides(bad)
    with pytest.raises(ConfigError, match="tiny.yaml: invalid config"):
        load_run_config(TINY, parse_overrides(["train.delta_loss=nope"]))


def test_zoo_set_changes_the_zoo_config_and_nothing_else():
    base = load_run_config(TINY)
    cfg = load_run_config(TINY, parse_overrides(["zoo_set.teacher.init=per_seed", "zoo_set.teacher.steps=2"]))
    zb, zs = zoo_config(base), zoo_config(cfg)
    assert (zb.teacher.init, zs.teacher.init, zs.teacher.steps) == ("canonical", "per_seed", 2)
    assert zs.model_copy(update={"teacher": zb.teacher}) == zb
    assert cfg.model_copy(update={"zoo_set": {}}) == base
    with pytest.raises(
        ConfigError, match=r"zoo_set does not fit the zoo config: .*tiny.yaml: invalid config: teacher.nope"
    ):
        load_run_config(TINY, parse_overrides(["zoo_set.teacher.nope=1"]))


def test_zoo_set_overrides_the_teacher_precision():
    cfg = load_run_config(TINY, parse_overrides(["zoo_set.teacher.precision=fp32"]))
    zoo = zoo_config(cfg)
    assert zoo.teacher.precision == "float32"
    assert resolved_config(zoo)["config"]["teacher"]["precision"] == "float32"
    with pytest.raises(ConfigError, match=r"zoo_set does not fit the zoo config: .*teacher.precision.*not one of"):
        load_run_config(TINY, parse_overrides(["zoo_set.teacher.precision=fp64"]))


def test_run_builds_its_zoo_with_zoo_set(tmp_path, tiny_qwen2, monkeypatch):
    import deltalora.experiment.run as run_module

    seen = []

    def stop(zoo_cfg, *a, **k):
        seen.append(zoo_cfg)
        raise RuntimeError("stop after the zoo config")

    monkeypatch.setattr(run_module, "build_zoo", stop)
    cfg = load_run_config(TINY, parse_overrides(["zoo_set.teacher.shared_init=true"]))
    with pytest.raises(RuntimeError, match="stop after"):
        run_experiment(cfg, tmp_path / "r", progress=False, backbone=tiny_qwen2)
    assert [z.teacher.init for z in seen] == ["per_seed"]  # the old spelling of committed runs' commands still works


def test_unknown_heldout_task_is_a_one_line_error(tmp_path, tiny_qwen2):
    cfg = load_run_config(TINY).model_copy(update={"heldout": ["nope"]})
    with pytest.raises(ConfigError, match="no single-task teacher"):
        run_experiment(cfg, tmp_path / "r", progress=False, backbone=tiny_qwen2)


def test_a_heldout_task_whose_sibling_trains_is_a_one_line_error(tmp_path, tiny_qwen2, monkeypatch):
    """``group`` ties two files of one benchmark: holding one out while the other trains would leak it."""
    import deltalora.zoo.build as build_module

    real = build_module.selected_specs

    def grouped(zoo_cfg):  # the zoo's suite, with pick and colours named siblings
        chosen, needed = real(zoo_cfg)
        tie = {"pick": "g", "colours": "g"}
        return [s.model_copy(update={"group": tie.get(s.name, "")}) for s in chosen], needed

    monkeypatch.setattr(build_module, "selected_specs", grouped)
    cfg = load_run_config(TINY)
    assert cfg.heldout == ["pick"]
    with pytest.raises(ConfigError, match=r"share a group \(pick ~ colours\)"):
        run_experiment(cfg, tmp_path / "r", progress=False, backbone=tiny_qwen2)


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("configs").glob("*.yaml")))
def test_shipped_run_configs_validate(path):
    if "scaling" in path:
        cfg = load_scaling_config(path)
        zoo = load_zoo_config(cfg.zoo)
        assert len(zoo.tasks or load_suite(zoo.suite)) >= 2 * cfg.folds
        return
    if "compose" in path:
        cfg = load_compose_config(path)
        zoo = load_zoo_config(cfg.zoo)
        assert len(zoo.mixed) >= 8 and set(cfg.pairs) <= {"+".join(p) for p in zoo.mixed}
        return
    if "ablate" in path:
        cfg = load_ablation_config(path)
        run = load_run_config(cfg.run)
    else:
        run = load_run_config(path)
    zoo = load_zoo_config(run.zoo)
    names = zoo.tasks or [s.name for s in load_suite(zoo.suite)]
    assert isinstance(run, RunConfig) and set(run.heldout) <= set(names)


def _train(cfg: Path, out: Path, run_dir: Path, env: dict) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "deltalora.cli",
        "train",
        "--config",
        str(cfg),
        "--arm",
        "delta",
        "--out",
        str(out),
        "--run-dir",
        str(run_dir),
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_train_cli_resumes_after_kill_9(tmp_path):
    base = yaml.safe_load(TINY.read_text())
    base["zoo"] = str(Path("tests/fixtures/zoo/tiny.yaml").resolve())
    base["train"].update(steps=120, save_every=7)
    cfg = tmp_path / "long.yaml"
    cfg.write_text(yaml.safe_dump(base))
    env = {**os.environ, "DELTALORA_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    ref = _train(cfg, tmp_path / "ref", tmp_path / "run", env)
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()[-2000:]
    victim = _train(cfg, tmp_path / "killed", tmp_path / "run", env)
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 40):
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "generator.safetensors").exists()
    again = _train(cfg, tmp_path / "killed", tmp_path / "run", env)
    assert again.wait(timeout=600) == 0, again.stderr.read().decode()[-2000:]
    assert (tmp_path / "killed" / "generator.safetensors").read_bytes() == (
        tmp_path / "ref" / "generator.safetensors"
    ).read_bytes()
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == list(range(120))


def test_torchrun_two_processes_train_one_generator(tmp_path):
    """`torchrun --nproc-per-node 2 deltalora train ...` on CPU: gloo DDP, rank 0 prepares the zoo and writes the
    outputs."""
    base = yaml.safe_load(TINY.read_text())
    base["zoo"] = str(Path("tests/fixtures/zoo/tiny.yaml").resolve())
    base["train"].update(steps=4)
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(base))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "DELTALORA_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "deltalora.cli",
        "train",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "gen"),
        "--run-dir",
        str(tmp_path / "run"),
        "--json",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout[done.stdout.index("{") :])["steps"] == 4  # printed once, by rank 0
    assert [json.loads(x)["step"] for x in (tmp_path / "gen" / "log.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
    assert (tmp_path / "gen" / "generator.safetensors").exists()


def test_train_cli_set_overrides_the_run_config(tmp_path, deltalora_home):
    from typer.testing import CliRunner

    from deltalora.cli import app

    args = [
        "train",
        "--config",
        str(TINY),
        "--arm",
        "weight_only",
        "--out",
        str(tmp_path / "g"),
        "--run-dir",
        str(tmp_path / "run"),
    ]
    res = CliRunner().invoke(app, args + ["--set", "train.steps=3"])
    assert res.exit_code == 0, res.output
    assert sorted(read_log(tmp_path / "g" / "log.jsonl")) == [0, 1, 2]  # the preset's step count replaced
    res = CliRunner().invoke(app, args + ["--set", "train.nope=1"])
    assert res.exit_code != 0 and "nope" in res.output


def test_eval_precision_is_validated_and_canonical():
    from pydantic import ValidationError

    from deltalora.experiment.config import EvalConfig

    assert EvalConfig().precision == "float32"
    assert EvalConfig(precision="bf16").precision == "bfloat16"
    with pytest.raises(ValidationError, match="precision"):
        EvalConfig(precision="fp8")
