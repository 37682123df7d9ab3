"""The multi-task LoRA baseline: the union of the seed's teachers' train items, the zoo's init, cached in the zoo."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from typer.testing import CliRunner

from deltalora.cli import app
from deltalora.zoo import (
    MANIFEST_NAME,
    MultitaskTeacher,
    ZooError,
    build_multitask,
    build_zoo,
    load_zoo_config,
    read_init,
    read_manifest,
)

FIX = Path(__file__).parent / "fixtures" / "zoo"


@pytest.fixture(scope="module")
def zoo(tiny_qwen2, tmp_path_factory):
    """A canonical tiny zoo (3 tasks x seeds 0, 1; no mixed pair) and the pairs each of its jobs trained on."""
    root = tmp_path_factory.mktemp("mt")
    yaml = root / "zoo.yaml"
    text = (FIX / "tiny.yaml").read_text().replace("suite: suite.yaml", f"suite: {FIX / 'suite.yaml'}")
    yaml.write_text(text.replace("mixed: [[colours, double]]", "mixed: []"))
    cfg = load_zoo_config(yaml)
    import deltalora.zoo.build as build_mod

    seen = {}
    real = build_mod.train_teacher

    def spy(backbone, pairs, tcfg, job_dir, **k):
        seen[f"{Path(job_dir).parent.name}/{Path(job_dir).name}"] = list(pairs)
        return real(backbone, pairs, tcfg, job_dir, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build_mod, "train_teacher", spy)
        build_zoo(cfg, root / "z", progress=False, backbone=tiny_qwen2)
    assert cfg.teacher.init == "canonical" and len(seen) == 6
    return root / "z", cfg, yaml, seen


@pytest.fixture
def calls(monkeypatch):
    """What build_multitask hands train_teacher (it still trains)."""
    import deltalora.zoo.multitask as mt

    got = []
    real = mt.train_teacher

    def spy(backbone, pairs, tcfg, out_dir, **k):
        got.append({"pairs": list(pairs), "cfg": tcfg, **k})
        return real(backbone, pairs, tcfg, out_dir, **k)

    monkeypatch.setattr(mt, "train_teacher", spy)
    return got


def _no_training(monkeypatch):
    import deltalora.zoo.multitask as mt

    def boom(*a, **k):
        raise AssertionError("a cached multi-task LoRA was retrained")

    monkeypatch.setattr(mt, "train_teacher", boom)


def test_trains_on_the_union_of_the_seed_teachers_items(zoo, tiny_qwen2, calls):
    z, cfg, _, seen = zoo
    t = build_multitask(z, cfg, ["pick", "colours"], seed=1, backbone=tiny_qwen2, progress=False)
    assert isinstance(t, MultitaskTeacher) and t.tasks == ("colours", "pick") and t.seed == 1
    assert len(calls) == 1
    got = calls[0]
    # exactly the items the zoo's seed-1 teachers of these tasks trained on (subset 6 of 10: seed 0's differ)
    assert sorted(got["pairs"]) == sorted(seen["colours/s1"] + seen["pick/s1"])
    assert sorted(got["pairs"]) != sorted(seen["colours/s0"] + seen["pick/s0"])
    # the teachers' budget per task, batch size and lr; warm-up scaled; one checkpoint
    tcfg = got["cfg"]
    assert t.steps == tcfg.steps == cfg.teacher.steps * 2 == 8
    assert (tcfg.batch_size, tcfg.lr, tcfg.warmup_steps, tcfg.checkpoints) == (
        cfg.teacher.batch_size,
        cfg.teacher.lr,
        cfg.teacher.warmup_steps * 2,
        1,
    )
    zoo_precision = {e.extra["precision"] for e in read_manifest(z)}  # what the teachers trained in here
    assert zoo_precision == {str(got["precision"]).removeprefix("torch.")}
    info = t.info
    assert info["tasks"] == ["colours", "pick"] and info["steps"] == 8 and info["seed"] == 1
    assert info["n_train_items"] == {"colours": 6, "pick": 6}
    assert info["budget"]["steps_per_task"] == cfg.teacher.steps and info["budget"]["examples"] == 8 * 2
    assert {info["precision"]} == zoo_precision and info["train_seconds"] >= 0
    # steps= overrides the budget, and warm-up follows it
    t2 = build_multitask(z, cfg, ["pick", "colours"], seed=1, steps=20, backbone=tiny_qwen2, progress=False)
    assert t2.steps == calls[1]["cfg"].steps == 20 and calls[1]["cfg"].warmup_steps == 5
    assert t2.info["budget"]["steps"] == 20 and t2.path != t.path


def test_a_canonical_zoo_starts_from_its_stored_init(zoo, tiny_qwen2, calls):
    z, cfg, _, _ = zoo
    t = build_multitask(z, cfg, ["double", "pick"], backbone=tiny_qwen2, progress=False)
    init = read_init(z, tiny_qwen2.arch)
    given = calls[0]["init"]
    assert given is not None and calls[0]["init_seed"] is None
    assert all(torch.equal(given.A[k], init.A[k]) and torch.equal(given.B[k], init.B[k]) for k in init.A)
    rec = json.loads((z / "zoo_config.json").read_text())["init"]
    assert t.info["init"] == "canonical" and t.info["init_sha256"] == rec["sha256"]


def test_second_call_reuses_the_cache_other_tasks_get_another_dir(zoo, tiny_qwen2, calls, monkeypatch):
    z, cfg, _, _ = zoo
    first = build_multitask(z, cfg, ["colours", "double"], steps=6, backbone=tiny_qwen2, progress=False)
    assert len(calls) == 1 and not first.cached
    key_dir = first.path.parent
    assert key_dir.parent == z / "multitask" and first.path.name == "adapter"
    assert sorted(p.name for p in key_dir.iterdir()) == ["adapter", "multitask.json"]
    assert not [p for p in (z / "multitask").iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    _no_training(monkeypatch)
    again = build_multitask(z, cfg, ["double", "colours"], steps=6, progress=False)  # no backbone needed
    assert again.cached and again.path == first.path and again.info == first.info
    assert again == first  # path, tasks, steps, seed
    monkeypatch.undo()
    other = build_multitask(z, cfg, ["colours", "double", "pick"], steps=6, backbone=tiny_qwen2, progress=False)
    assert other.path.parent != key_dir and other.path.parent.parent == z / "multitask"
    # a tampered cached adapter is refused, not silently used
    f = first.path / "adapter_model.safetensors"
    blob = f.read_bytes()
    try:
        f.write_bytes(blob[:-8] + bytes(8))
        with pytest.raises(ZooError, match="sha256 differs") as err:
            build_multitask(z, cfg, ["colours", "double"], steps=6, progress=False)
        assert "\n" not in str(err.value)
    finally:
        f.write_bytes(blob)


def test_a_failed_or_killed_build_leaves_no_final_dir(zoo, tiny_qwen2, monkeypatch):
    z, cfg, _, _ = zoo
    import deltalora.zoo.multitask as mt

    real = mt.train_teacher

    def dies(backbone, pairs, tcfg, out_dir, **k):
        real(backbone, pairs, tcfg, out_dir, **k)  # the adapter is on disk, in the scratch dir
        raise KeyboardInterrupt

    monkeypatch.setattr(mt, "train_teacher", dies)
    before = set((z / "multitask").iterdir()) if (z / "multitask").is_dir() else set()
    with pytest.raises(KeyboardInterrupt):
        build_multitask(z, cfg, ["double"], steps=3, backbone=tiny_qwen2, progress=False)
    assert {p for p in (z / "multitask").iterdir() if not p.name.endswith(".lock")} == {
        p for p in before if not p.name.endswith(".lock")
    }
    monkeypatch.undo()
    t = build_multitask(z, cfg, ["double"], steps=3, backbone=tiny_qwen2, progress=False)
    # a SIGKILLed build leaves its scratch dir behind: the next build of that key clears it
    key = t.path.parent.name
    shutil.rmtree(t.path.parent)
    stale = z / "multitask" / f".{key}.tmp-killed"
    (stale / "step3").mkdir(parents=True)
    t2 = build_multitask(z, cfg, ["double"], steps=3, backbone=tiny_qwen2, progress=False)
    assert not stale.exists() and t2.path == t.path and t2.info["adapter_sha256"] == t.info["adapter_sha256"]


def test_a_killed_build_resumes_from_its_saved_state(zoo, tiny_qwen2, monkeypatch):
    z, cfg, _, _ = zoo
    import deltalora.zoo.multitask as mt

    ref = build_multitask(z, cfg, ["colours", "pick"], steps=9, seed=1, backbone=tiny_qwen2, progress=False)
    ref_bytes = (ref.path / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(ref.path.parent)
    monkeypatch.setattr(mt, "RESUME_EVERY", 2)
    real = mt.train_teacher
    steps, kill = [], [True]

    def killed_at_7(backbone, pairs, tcfg, out_dir, **k):
        def progress(step, loss):
            steps.append(step)
            if step == 7 and kill[0]:
                raise KeyboardInterrupt

        return real(backbone, pairs, tcfg, out_dir, **{**k, "progress": progress})

    monkeypatch.setattr(mt, "train_teacher", killed_at_7)
    with pytest.raises(KeyboardInterrupt):
        build_multitask(z, cfg, ["colours", "pick"], steps=9, seed=1, backbone=tiny_qwen2, progress=False)
    key = ref.path.parent.name
    assert not ref.path.parent.exists() and (z / "multitask" / f".{key}.resume" / "state").is_dir()
    steps.clear()
    kill[0] = False
    t = build_multitask(z, cfg, ["colours", "pick"], steps=9, seed=1, backbone=tiny_qwen2, progress=False)
    assert steps == [7, 8, 9]  # from the state of step 6, not from the start
    assert (t.path / "adapter_model.safetensors").read_bytes() == ref_bytes  # as if never stopped
    assert not (z / "multitask" / f".{key}.resume").exists()


def test_unknown_task_and_other_bad_input_are_one_line_errors(zoo, tmp_path):
    z, cfg, _, _ = zoo
    with pytest.raises(ZooError, match=rf"task 'nope' is not one of the single tasks of zoo {z}") as err:
        build_multitask(z, cfg, ["pick", "nope"], progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ZooError, match="at least one task"):
        build_multitask(z, cfg, [], progress=False)
    with pytest.raises(ZooError, match="seed 5 is not one of"):
        build_multitask(z, cfg, ["pick"], seed=5, progress=False)
    other = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"lr": 0.5})})
    with pytest.raises(ZooError, match=r"different config \(differs in config\.teacher\.lr\)") as err:
        build_multitask(z, other, ["pick"], progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ZooError, match="not a zoo directory"):
        build_multitask(tmp_path, cfg, ["pick"], progress=False)
    assert not (tmp_path / "multitask").exists()


def test_the_zoo_itself_is_untouched(zoo, tiny_qwen2, monkeypatch):
    z, cfg, _, _ = zoo
    files = {n: (z / n).read_bytes() for n in (MANIFEST_NAME, "zoo_config.json")}
    entries = read_manifest(z, verify=True)
    build_multitask(z, cfg, ["colours", "pick"], steps=5, seed=0, backbone=tiny_qwen2, progress=False)
    assert {n: (z / n).read_bytes() for n in files} == files
    assert read_manifest(z, verify=True) == entries
    import deltalora.zoo.build as build_mod

    def boom(*a, **k):
        raise AssertionError("the zoo was retrained")

    monkeypatch.setattr(build_mod, "train_teacher", boom)
    assert len(build_zoo(cfg, z, progress=False, backbone=tiny_qwen2)) == len(entries)  # still a finished zoo


def test_the_adapter_loads_in_peft_and_with_the_backbones_arch(zoo, tiny_qwen2):
    z, cfg, _, _ = zoo
    t = build_multitask(z, cfg, ["colours", "double", "pick"], backbone=tiny_qwen2, progress=False)
    w = t.weights(tiny_qwen2.arch)
    assert w.layout.spec.rank == 2 and set(w.layout.spec.targets) == {"q_proj", "v_proj"}
    assert any(float(b.abs().max()) > 0 for b in w.B.values())  # it trained
    model = PeftModel.from_pretrained(copy.deepcopy(tiny_qwen2.model), str(t.path)).eval()  # stock PEFT
    state = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
    assert len(state) == 2 * len(w.layout.slots)
    for s in w.layout.slots:
        assert torch.equal(state[f"base_model.model.{s.path}.lora_A.default.weight"], w.A[s.key])
        assert torch.equal(state[f"base_model.model.{s.path}.lora_B.default.weight"], w.B[s.key])


def test_cli_multitask(zoo, deltalora_home):
    z, _, yaml, _ = zoo
    runner = CliRunner()
    args = ["zoo", "multitask", "--config", str(yaml), "--zoo", str(z), "--tasks", "pick,double", "--steps", "2"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()  # the progress bar goes to stderr
    path = Path(lines[-2])
    assert path.parent.parent == z / "multitask" and (path / "adapter_model.safetensors").is_file()
    assert "2 tasks (double, pick), seed 0: 2 steps (1 per task) x batch 2 = 4 examples" in lines[-1]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["cached"] is True
    r = runner.invoke(app, ["zoo", "multitask", "--config", str(yaml), "--zoo", str(z), "--tasks", "pick,nope"])
    assert r.exit_code != 0 and "'nope'" in r.output and len(r.output.strip().splitlines()) == 1
