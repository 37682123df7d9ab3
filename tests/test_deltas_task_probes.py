"""Task probes: each teacher's Δ over a seeded sample of its own task's train prompts (never condition or eval items),
formatted as the teacher saw them, computed per task group through the cache and read back by the teacher dataset."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from deltalora.cli import app
from deltalora.deltas import (
    AnswerLogProbs,
    DeltaCache,
    DeltaExtractor,
    DeltaProbe,
    DeltaSpec,
    ProbeError,
    TaskProbes,
    answer_kl,
    compute_deltas,
    get_probe_set,
    parse_task_probes,
    sources_from_manifest,
    task_probe_set,
)
from deltalora.deltas.jobs import zoo_tasks
from deltalora.errors import ConfigError
from deltalora.lora import LoraWeights, load_adapter
from deltalora.tasks import format_prompt
from deltalora.training import LambdaSchedule, TrainConfig, train_generator
from deltalora.training.data import TeacherDataset
from deltalora.training.logs import read_log
from deltalora.zoo import build_zoo, load_zoo_config, read_manifest
from tests.helpers import N_PROMPTS, peft_reference, teacher_world

ZOO = "tests/fixtures/zoo/tiny.yaml"


def test_task_probe_specs_parse_and_refuse_condition_and_eval_items():
    assert parse_task_probes("task:train:16").name == "task:train:16"
    assert parse_task_probes("task:train:4:3").seed == 3
    for bad, match in (
        ("task:eval:4", "never probes"),
        ("task:condition:4", "never probes"),
        ("task:train:x", "integers"),
        ("task:train:0", "≥ 1"),
        ("task:train", "task:train:N"),
    ):
        with pytest.raises(ProbeError, match=match):
            parse_task_probes(bad)
    with pytest.raises(ProbeError, match="pass a zoo"):
        get_probe_set("task:train:4")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_qwen2):
    return teacher_world(tmp_path_factory.mktemp("task-probes"), tiny_qwen2)


def test_a_teachers_probes_are_its_own_train_prompts_as_it_saw_them(world, tiny_qwen2):
    tok = tiny_qwen2.tokenizer
    tasks = world["tasks"]
    spec = parse_task_probes("task:train:4")
    ps = task_probe_set(spec, [tasks["a"]], tok)
    train = {format_prompt(tok, tasks["a"], it) for it in tasks["a"].train}
    others = {format_prompt(tok, tasks["a"], it) for it in tasks["a"].condition + tasks["a"].eval}
    assert len(ps) == 4 and set(ps.texts) <= train and not set(ps.texts) & others
    assert ps == task_probe_set(spec, [tasks["a"]], tok)  # seeded: the same set every time
    assert ps != task_probe_set(parse_task_probes("task:train:4:1"), [tasks["a"]], tok)
    mixed = task_probe_set(parse_task_probes("task:train:8"), [tasks["a"], tasks["b"]], tok)
    both = train | {format_prompt(tok, tasks["b"], it) for it in tasks["b"].train}
    assert set(mixed.texts) <= both and mixed.name == "task:a+b:train:8"
    with pytest.raises(ProbeError, match=r"has 8 train items, fewer than 9; use task:train:8"):
        task_probe_set(parse_task_probes("task:train:9"), [tasks["a"]], tok)


def test_compute_deltas_probes_every_teacher_on_its_own_task(world, tiny_qwen2, tmp_path):
    probes = TaskProbes("task:train:4", world["tasks"], tiny_qwen2.tokenizer)
    cache = DeltaCache(tmp_path / "cache")
    sources = sorted(sources_from_manifest(world["zoo"]), key=lambda s: s.id)  # results come in sorted id order
    report = compute_deltas(tiny_qwen2, sources, probes, "last_token", cache)
    assert report.probes == "task:train:4" and not report.broken
    assert [r.id for r in report.results] == [s.id for s in sources]
    spec = DeltaSpec.for_backbone(tiny_qwen2, probes, "last_token")
    for src, res in zip(sources, report.results):
        own = probes.probe_set(src.tasks)
        assert res.key == spec.with_probes(own).key(src.path)
        direct = DeltaExtractor(tiny_qwen2, own, "last_token", DeltaCache(tmp_path / f"direct-{res.id[:1]}"))
        want = direct.run([src]).load()[1][0]
        assert torch.allclose(cache.get(res.key).tensor, want, atol=1e-5)
    generic = dict(zip(*compute_deltas(tiny_qwen2, sources, "generic5", "last_token", cache).load()))
    ids, task_deltas = report.load()
    assert not torch.allclose(task_deltas[0], generic[ids[0]])
    # a rerun is all cache hits, and the teacher dataset finds every Δ under its teacher's own probe set
    assert compute_deltas(tiny_qwen2, sources, probes, "last_token", cache).counts()["cached"] == len(sources)
    ds = TeacherDataset(world["zoo"], world["conditioner"], spec, cache=cache, arch=world["arch"], task_probes=probes)
    for e, d in zip(ds.entries, ds.deltas):
        assert torch.equal(d, dict(zip(ids, task_deltas))[e.id])


def test_task_probes_over_a_built_zoo_from_the_cli(tiny_qwen2, tmp_path):
    zoo = tmp_path / "zoo"
    build_zoo(load_zoo_config(ZOO), zoo, progress=False, backbone=tiny_qwen2)
    with pytest.raises(Exception, match="user file"):  # the fixture suite reads JSONL files: their paths are not kept
        zoo_tasks(zoo)
    assert set(zoo_tasks(zoo, ZOO)) == {"colours", "double", "pick"}
    runner = CliRunner()
    base = ["deltas", "compute", "--backbone", "tiny-qwen2", "--zoo", str(zoo), "--cache", str(tmp_path / "c")]
    res = runner.invoke(app, [*base, "--probes", "task:train:4", "--zoo-config", ZOO, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{") :])
    assert report["probes"] == "task:train:4" and report["counts"]["computed"] == len(read_manifest(zoo))
    res = runner.invoke(app, [*base, "--probes", "task:eval:4"])
    assert res.exit_code != 0 and "never probes" in res.output
    res = runner.invoke(app, [*base, "--probes", "task:train:4"])
    assert res.exit_code != 0 and "--zoo-config" in res.output


def test_the_differentiable_probe_matches_the_cached_task_deltas_and_passes_gradients(world, tiny_qwen2, tmp_path):
    probes = TaskProbes("task:train:4", world["tasks"], tiny_qwen2.tokenizer)
    cache = DeltaCache(tmp_path / "cache")
    sources = sorted(sources_from_manifest(world["zoo"]), key=lambda s: s.id)
    report = compute_deltas(tiny_qwen2, sources, probes, "last_token", cache)
    cached = dict(zip(*report.load()))
    chosen = [s for s in sources if s.id in ("a/s0", "c/s1", "a+b/s0")]  # three groups, different probe lengths
    weights = LoraWeights.stack([load_adapter(s.path, tiny_qwen2.arch) for s in chosen])
    probe = DeltaProbe(tiny_qwen2, probes, "last_token")
    got = probe(weights, [s.tasks for s in chosen])
    for s, d in zip(chosen, got):
        assert torch.allclose(d, cached[s.id], atol=1e-4), s.id
    with pytest.raises(ValueError, match="one task group per adapter"):
        probe(weights)
    leaf = {k: v.clone().requires_grad_(True) for k, v in weights.B.items()}
    probe(LoraWeights(weights.layout, weights.A, leaf), [s.tasks for s in chosen]).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaf.values())


def _task_cfg(**kw) -> TrainConfig:
    """A tiny compact generator trained against task-probe Δ (task:train:4)."""
    base = dict(
        generator="compact",
        generator_options={"trunk_width": 32, "head_hidden": 16, "basis_dim": 4},
        encoder="tiny-encoder",
        n_prompts=N_PROMPTS,
        steps=4,
        batch_size=3,
        delta_batch=2,
        lr=3e-3,
        warmup_steps=1,
        probes="task:train:4",
        save_every=2,
    )
    return TrainConfig(**{**base, **kw})


def test_generator_training_matches_task_probe_deltas(world, tiny_qwen2, tmp_path):
    probes = TaskProbes("task:train:4", world["tasks"], tiny_qwen2.tokenizer)
    cache = DeltaCache(tmp_path / "cache")
    compute_deltas(tiny_qwen2, sources_from_manifest(world["zoo"]), probes, "last_token", cache)
    spec = DeltaSpec.for_backbone(tiny_qwen2, probes, "last_token")
    kw = dict(cache=cache, arch=world["arch"], heldout=["c"])
    ds = TeacherDataset(world["zoo"], world["conditioner"], spec, task_probes=probes, **kw)
    cfg = _task_cfg(lam=LambdaSchedule(target=1.0, warmup_steps=1, ramp_steps=1))
    train_generator(cfg, ds, tiny_qwen2, tmp_path / "gen", progress=False)
    log = read_log(tmp_path / "gen" / "log.jsonl")
    with_delta = [r for r in log.values() if r.get("loss_delta") is not None]
    assert with_delta and all(r["loss_delta"] > 0 for r in with_delta)
    # a dataset of generic-probe Δ under a task-probe Δ loss (or the reverse) is refused before training
    generic = TeacherDataset(world["zoo"], world["conditioner"], world["spec"], **{**kw, "cache": world["cache"]})
    with pytest.raises(ConfigError, match="train.probes is task:train:4 but the teacher dataset holds Δ over generic5"):
        train_generator(cfg, generic, tiny_qwen2, tmp_path / "gen2", progress=False)
    with pytest.raises(ConfigError, match="holds Δ over task:train:4"):
        train_generator(
            cfg.model_copy(update={"probes": "generic5"}), ds, tiny_qwen2, tmp_path / "gen3", progress=False
        )


def test_answer_log_probs_are_the_teacher_forced_answer_tokens_and_kl_vanishes_on_the_teacher(world, tiny_qwen2):
    probes = TaskProbes("task:train:4", world["tasks"], tiny_qwen2.tokenizer)
    answers = AnswerLogProbs(tiny_qwen2, probes, max_answer_tokens=6)
    sources = sorted(sources_from_manifest(world["zoo"]), key=lambda s: s.id)
    chosen = [s for s in sources if s.id in ("a/s0", "b+c/s0")]
    weights = LoraWeights.stack([load_adapter(s.path, tiny_qwen2.arch) for s in chosen])
    groups = [s.tasks for s in chosen]
    got = answers(weights, groups)
    mask = answers.mask(groups)
    assert got.shape[:2] == mask.shape and mask.any(-1).all()
    # reference for the first adapter: stock PEFT, the full logits of prompt + answer, read at the answer positions
    tok = tiny_qwen2.tokenizer
    ref = peft_reference(tiny_qwen2.model, weights.select(0))
    row = 0
    for task, item in probes.items(groups[0]):
        p = tok(format_prompt(tok, task, item), add_special_tokens=False)["input_ids"]
        a = tok(item.answer + tok.eos_token, add_special_tokens=False)["input_ids"][:6]
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([p + a])).logits[0].float()
        want = torch.log_softmax(logits[len(p) - 1 : len(p) - 1 + len(a)], -1)
        assert torch.allclose(got[0, row : row + len(a)], want, atol=1e-4)
        row += len(a)
    assert row == int(mask[0].sum())
    assert torch.allclose(answer_kl(got, got, mask), torch.zeros(2), atol=1e-6)
    base = answers(None, groups)
    kl = answer_kl(got, base, mask)
    assert (kl > 0).all()
    leaf = {k: v.clone().requires_grad_(True) for k, v in weights.B.items()}
    answer_kl(got.detach(), answers(LoraWeights(weights.layout, weights.A, leaf), groups), mask).sum().backward()
    assert all(t.grad is not None for t in leaf.values())


def _task_dataset(world, tiny_qwen2, tmp_path) -> TeacherDataset:
    """The world's teachers with their task-probe Δ (task:train:4) computed into a fresh cache; "c" held out."""
    probes = TaskProbes("task:train:4", world["tasks"], tiny_qwen2.tokenizer)
    cache = DeltaCache(tmp_path / "cache")
    compute_deltas(tiny_qwen2, sources_from_manifest(world["zoo"]), probes, "last_token", cache)
    spec = DeltaSpec.for_backbone(tiny_qwen2, probes, "last_token")
    return TeacherDataset(
        world["zoo"], world["conditioner"], spec, cache=cache, arch=world["arch"], heldout=["c"], task_probes=probes
    )


def test_b1_delta_only_training_with_kl_tether_and_norm_penalty(world, tiny_qwen2, tmp_path):
    """B1: no weight loss; task-probe Δ + KL(teacher ‖ generated) on answer tokens + μ‖ΔW‖², all logged."""
    ds = _task_dataset(world, tiny_qwen2, tmp_path)
    cfg = _task_cfg(
        lam=LambdaSchedule(target=1.0),
        weight_scale=0.0,
        kl=LambdaSchedule(target=0.5, warmup_steps=1),
        kl_probes="task:train:4",
        kl_answer_tokens=4,
        norm_penalty=0.1,
    )
    with pytest.raises(ConfigError, match="needs the zoo's tasks"):
        train_generator(cfg, ds, tiny_qwen2, tmp_path / "no-tasks", progress=False)
    train_generator(cfg, ds, tiny_qwen2, tmp_path / "b1", progress=False, tasks=world["tasks"])
    log = list(read_log(tmp_path / "b1" / "log.jsonl").values())
    assert log[0]["loss_kl"] is None and all(r["loss_kl"] > 0 for r in log[1:])  # after the KL warm-up
    assert all(r["weight_norm"] is not None and r["loss_delta"] is not None for r in log)
    # the weight loss is logged but not trained on: the total is Δ + KL + norm
    last = log[-1]
    total = last["loss_delta"] + last["lambda_kl"] * last["loss_kl"] + 0.1 * last["weight_norm"]
    assert last["loss"] == pytest.approx(total, rel=1e-5)
    with pytest.raises(ValueError, match="weight_scale 0 leaves no loss"):
        TrainConfig(weight_scale=0.0)
    with pytest.raises(ValueError, match="kl_probes must be task probes"):
        TrainConfig(kl_probes="generic5")


@pytest.mark.parametrize("rep", ["last_token", "mean", "layers:[1,2]:avg"])
def test_one_forward_over_prompt_and_answer_gives_the_kl_and_the_task_probe_delta(world, tiny_qwen2, rep):
    """The fused Δ + KL step: the answers' forward pooled over the prompt tokens is the Δ probe's own forward."""
    probes = TaskProbes("task:train:4", world["tasks"], tiny_qwen2.tokenizer)
    answers = AnswerLogProbs(tiny_qwen2, TaskProbes("task:train:4", world["tasks"], tiny_qwen2.tokenizer), 6)
    probe = DeltaProbe(tiny_qwen2, probes, rep)
    assert probe.shares_forward_with(answers)
    sources = sorted(sources_from_manifest(world["zoo"]), key=lambda s: s.id)
    chosen = [s for s in sources if s.id in ("a/s0", "a+b/s0", "c/s1")]  # a mixed group, different prompt lengths
    weights = LoraWeights.stack([load_adapter(s.path, tiny_qwen2.arch) for s in chosen])
    groups = [s.tasks for s in chosen]
    assert all(answers.prompts_are(g, probe.probe_texts(g)) for g in groups)
    assert not answers.prompts_are(groups[0], probe.probe_texts(groups[2]))

    def leaves():
        return LoraWeights(weights.layout, weights.A, {k: v.clone().requires_grad_(True) for k, v in weights.B.items()})

    target = torch.randn(len(chosen), probe.rep.dim(tiny_qwen2.arch.hidden_size))
    sep_w, fused_w = leaves(), leaves()
    sep_logp, sep_delta = answers(sep_w, groups), probe(sep_w, groups)
    fused_logp, v = answers(fused_w, groups, rep=probe.rep)
    fused_delta = probe.delta_of(v, groups)
    assert torch.allclose(fused_logp, sep_logp, atol=1e-5)
    assert torch.allclose(fused_delta, sep_delta, atol=1e-4, rtol=1e-4)
    mask = answers.mask(groups)
    for lp, d, w in ((sep_logp, sep_delta, sep_w), (fused_logp, fused_delta, fused_w)):
        (answer_kl(sep_logp.detach() * 0.9, lp, mask).sum() + (d - target).square().sum()).backward()
    for k in weights.B:
        assert torch.allclose(fused_w.B[k].grad, sep_w.B[k].grad, atol=1e-4, rtol=1e-3), k
    # another probe count, or a probe forward in another dtype than the answers' forward, is not shared
    assert not DeltaProbe(
        tiny_qwen2, TaskProbes("task:train:2", world["tasks"], tiny_qwen2.tokenizer)
    ).shares_forward_with(answers)
    assert not DeltaProbe(tiny_qwen2, probes, rep, dtype="bfloat16").shares_forward_with(answers)


def test_delta_and_kl_training_runs_one_student_forward_per_step_and_logs_what_two_forwards_do(
    world, tiny_qwen2, tmp_path, monkeypatch
):
    ds = _task_dataset(world, tiny_qwen2, tmp_path)
    cfg = _task_cfg(
        lam=LambdaSchedule(target=1.0), kl=LambdaSchedule(target=0.5), kl_probes="task:train:4", kl_answer_tokens=4
    )
    decoder = tiny_qwen2.model.get_decoder()
    calls = []
    real = type(decoder).forward
    monkeypatch.setattr(
        type(decoder), "forward", lambda self, *a, **k: calls.append(torch.is_grad_enabled()) or real(self, *a, **k)
    )
    train_generator(cfg, ds, tiny_qwen2, tmp_path / "fused", progress=False, tasks=world["tasks"])
    fused_calls, calls[:] = list(calls), []
    monkeypatch.setattr(DeltaProbe, "shares_forward_with", lambda self, answers: False)
    train_generator(cfg, ds, tiny_qwen2, tmp_path / "two", progress=False, tasks=world["tasks"])
    assert fused_calls.count(True) == cfg.steps and calls.count(True) == 2 * cfg.steps  # forwards with gradients
    fused = read_log(tmp_path / "fused" / "log.jsonl")
    two = read_log(tmp_path / "two" / "log.jsonl")
    for step in two:
        for key in ("loss", "loss_delta", "loss_kl", "loss_weights"):
            assert fused[step][key] == pytest.approx(two[step][key], rel=1e-3, abs=1e-6), (step, key)
