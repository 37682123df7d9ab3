"""Zoo builder: job planning, sharding, a tiny build, resume after kill -9, config guard, DnD import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from deltalora.cli import app
from deltalora.config import LoraSpec
from deltalora.lora import LoraWeights, derive_layout, load_adapter
from deltalora.sharding import ShardError
from deltalora.zoo import (
    MANIFEST_NAME,
    TeacherTrainConfig,
    ZooError,
    build_zoo,
    import_dnd,
    load_zoo_config,
    parse_shard,
    plan_jobs,
    read_init,
    read_manifest,
    shard_jobs,
    zoo_init_kind,
)

FIX = Path(__file__).parent / "fixtures" / "zoo"
CONFIG = FIX / "tiny.yaml"


@pytest.fixture(scope="module")
def cfg():
    return load_zoo_config(CONFIG)


@pytest.fixture(scope="module")
def built(tiny_qwen2, tmp_path_factory, cfg):
    out = tmp_path_factory.mktemp("zoo") / "z"
    return out, build_zoo(cfg, out, progress=False, backbone=tiny_qwen2)


def test_plan_has_every_task_seed_and_mixed_pair(cfg):
    jobs = plan_jobs(cfg)
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    assert {j.id for j in jobs} == {
        f"{t}/s{s}" for t in ("colours", "double", "pick", "colours+double") for s in (0, 1)
    }
    mixed = [j for j in jobs if j.mixed]
    assert {j.components for j in mixed} == {("colours", "double")}
    assert {j.family for j in mixed} == {"mixed"}  # knowledge + math
    assert cfg.tail_steps() == [2, 4]


def test_shards_are_disjoint_and_cover_the_plan(cfg):
    jobs = plan_jobs(cfg)
    parts = [shard_jobs(jobs, (i, 3)) for i in range(3)]
    ids = [j.id for p in parts for j in p]
    assert sorted(ids) == sorted(j.id for j in jobs) and len(set(ids)) == len(ids)
    assert parse_shard("1/3") == (1, 3) and parse_shard(None) == (0, 1)
    for bad in ("3/3", "x/2", "1", "-1/2", "0/0"):
        with pytest.raises(ShardError, match="--shard"):
            parse_shard(bad)


def test_build_writes_distinct_verified_adapters(built, tiny_qwen2):
    out, entries = built
    assert len(entries) == 8 * 2  # 8 jobs x 2 tail checkpoints
    listed = read_manifest(out, verify=True)
    assert {e.id for e in listed} == {e.id for e in entries}
    hashes = {e.sha256 for e in listed}
    assert len(hashes) == len(listed)  # seeds, subsets and steps all give distinct adapters
    for e in listed:
        w = load_adapter(out / e.path, arch=tiny_qwen2.arch)
        assert w.layout.spec.rank == 2 and set(w.layout.spec.targets) == {"q_proj", "v_proj"}
        assert e.train_loss is not None and e.extra["n_train_items"]
    mixed = [e for e in listed if e.mixed]
    assert mixed and all(e.tasks == ("colours", "double") and e.task == "colours+double" for e in mixed)
    assert all(e.extra["n_train_items"] == {"colours": 6, "double": 6} for e in mixed)
    # different seeds train on different subsets of the train split
    assert json.loads((out / "zoo_config.json").read_text())["config"]["subset"] == 6


def _tail_a(zoo: Path, entries, arch) -> dict:
    """Flattened A of each job's last checkpoint, by entry id."""
    last = max(e.step for e in entries)
    out = {}
    for e in entries:
        if e.step == last:
            w = load_adapter(zoo / e.path, arch=arch)
            out[e.id] = (e.seed, torch.cat([w.A[k].flatten() for k in sorted(w.A)]))
    return out


def test_canonical_init_is_one_for_the_whole_zoo(cfg, tiny_qwen2, tmp_path):
    """The default: every job — all tasks, both seeds, the mixed pair — starts from the one init stored in the zoo.
    At a learning rate of 1e-9 the saved A is the init (AdamW moves a weight by about lr per step)."""
    assert cfg.teacher.init == "canonical"
    tiny_lr = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"lr": 1e-9})})
    entries = build_zoo(tiny_lr, tmp_path / "z", progress=False, backbone=tiny_qwen2)
    init = read_init(tmp_path / "z", tiny_qwen2.arch)
    assert init is not None and all(float(t.abs().max()) == 0 for t in init.B.values())
    rec = json.loads((tmp_path / "z" / "zoo_config.json").read_text())["init"]
    assert rec["path"] == "init" and len(rec["sha256"]) == 64 and zoo_init_kind(tmp_path / "z") == "canonical"
    ref = torch.cat([init.A[k].flatten() for k in sorted(init.A)])
    a = _tail_a(tmp_path / "z", entries, tiny_qwen2.arch)
    assert {seed for seed, _ in a.values()} == {0, 1} and any("+" in i for i in a)
    assert all(torch.allclose(x, ref, atol=1e-6) for _, x in a.values())
    assert all(e.extra["init"] == "canonical" and e.extra["init_sha256"] == rec["sha256"] for e in entries)
    # a changed init file is refused, by readers and by the next build
    f = tmp_path / "z" / "init" / "adapter_model.safetensors"
    blob = f.read_bytes()
    f.write_bytes(blob[:-8] + bytes(b ^ 0x40 for b in blob[-8:]))
    with pytest.raises(ZooError, match="sha256 differs"):
        read_init(tmp_path / "z")
    with pytest.raises(ZooError, match="sha256 differs"):
        build_zoo(tiny_lr, tmp_path / "z", progress=False, backbone=tiny_qwen2)


def test_per_seed_init_and_its_old_spelling(cfg, tiny_qwen2, tmp_path):
    """teacher.init: per_seed (old spelling shared_init: true): the jobs of one seed share their A, seeds differ."""
    spelled = TeacherTrainConfig.model_validate(
        {**cfg.teacher.model_dump(exclude={"init", "init_seed"}), "shared_init": True}
    )
    assert spelled.init == "per_seed"
    with pytest.raises(ValueError, match="both init and shared_init"):
        TeacherTrainConfig.model_validate({"init": "canonical", "shared_init": False})
    teacher = spelled.model_copy(update={"lr": 1e-9})
    z = tmp_path / "z"
    a = _tail_a(
        z,
        build_zoo(cfg.model_copy(update={"teacher": teacher}), z, progress=False, backbone=tiny_qwen2),
        tiny_qwen2.arch,
    )
    by_seed = {}
    for seed, x in a.values():
        by_seed.setdefault(seed, []).append(x)
    assert len(by_seed) == 2 and all(len(v) >= 3 for v in by_seed.values())  # tasks and a mixed pair per seed
    for v in by_seed.values():
        assert all(torch.allclose(x, v[0], atol=1e-6) for x in v)
    assert not torch.allclose(by_seed[0][0], by_seed[1][0], atol=1e-3)
    assert read_init(z) is None and zoo_init_kind(z) == "per_seed" and not (z / "init").exists()
    assert "init_seed" not in json.loads((z / "zoo_config.json").read_text())["config"]["teacher"]


def test_a_zoo_from_before_the_init_option_still_builds_and_says_its_kind(cfg, tiny_qwen2, tmp_path):
    """Old zoo configs have no teacher.init (and maybe shared_init): read as per_job / per_seed; extending one
    needs that kind, and the refusal says so."""
    per_job = cfg.model_copy(
        update={
            "tasks": ["pick"],
            "seeds": [0],
            "mixed": [],
            "teacher": cfg.teacher.model_copy(update={"init": "per_job"}),
        }
    )
    z = tmp_path / "old"
    build_zoo(per_job, z, progress=False, backbone=tiny_qwen2)
    saved = json.loads((z / "zoo_config.json").read_text())
    del saved["config"]["teacher"]["init"]  # as a zoo built before the option was saved
    (z / "zoo_config.json").write_text(json.dumps(saved))
    assert zoo_init_kind(z) == "per_job" and read_init(z) is None
    assert len(build_zoo(per_job, z, progress=False, backbone=tiny_qwen2)) == 2  # a no-op resume, not a refusal
    canonical = per_job.model_copy(update={"teacher": cfg.teacher})
    with pytest.raises(ZooError, match="it is a per_job zoo.*teacher.init=per_job"):
        build_zoo(canonical, z, progress=False, backbone=tiny_qwen2)


def test_adding_tasks_with_reuse_keeps_the_canonical_init(cfg, tiny_qwen2, tmp_path):
    """A bigger zoo built with --reuse of a canonical zoo takes that zoo's init (not a fresh draw, even from
    another init_seed), so old and new teachers share one coordinate system; the finished jobs are copied."""
    small = cfg.model_copy(update={"tasks": ["pick"], "seeds": [0], "mixed": []})
    build_zoo(small, tmp_path / "small", progress=False, backbone=tiny_qwen2)
    bigger = cfg.model_copy(
        update={
            "tasks": ["pick", "double"],
            "seeds": [0],
            "mixed": [],
            "teacher": cfg.teacher.model_copy(update={"init_seed": 7}),
        }
    )
    got = build_zoo(bigger, tmp_path / "big", progress=False, backbone=tiny_qwen2, reuse=[tmp_path / "small"])
    rec = lambda z: json.loads((tmp_path / z / "zoo_config.json").read_text())["init"]["sha256"]  # noqa: E731
    assert rec("big") == rec("small")
    assert {e.id for e in got if "reused_from" in e.extra} == {"pick/s0/step2", "pick/s0/step4"}
    # without --reuse, init_seed 7 draws a different init — and then nothing of the small zoo is reusable
    alone = build_zoo(
        bigger.model_copy(update={"tasks": ["pick"]}), tmp_path / "alone", progress=False, backbone=tiny_qwen2
    )
    assert rec("alone") != rec("small") and not any("reused_from" in e.extra for e in alone)


def test_rebuild_is_a_no_op(built, cfg, tiny_qwen2, monkeypatch):
    out, entries = built
    import deltalora.zoo.build as build_mod

    def boom(*a, **k):
        raise AssertionError("a finished job was retrained")

    monkeypatch.setattr(build_mod, "train_teacher", boom)
    again = build_zoo(cfg, out, progress=False, backbone=tiny_qwen2)
    assert [e.id for e in again] == [e.id for e in entries]


def test_different_config_is_refused(built, cfg, tiny_qwen2):
    out, _ = built
    other = cfg.model_copy(update={"seeds": [0, 1, 2]})
    with pytest.raises(ZooError, match="different config"):
        build_zoo(other, out, progress=False, backbone=tiny_qwen2)


def test_shards_into_one_zoo_equal_the_full_build(built, cfg, tiny_qwen2, tmp_path):
    full_out, full = built
    out = tmp_path / "sharded"
    for i in range(2):
        build_zoo(cfg, out, shard=(i, 2), progress=False, backbone=tiny_qwen2)
    got = {e.id: e.sha256 for e in read_manifest(out, verify=True)}
    assert got == {e.id: e.sha256 for e in full}  # deterministic: same bytes whichever process trains a job


def test_a_task_group_is_a_fold_label_not_part_of_what_a_teacher_learns(cfg, tmp_path):
    """``group`` (siblings held out together) leaves the zoo's recipe as it was, so a zoo built before a suite named
    its groups is still the same zoo (extended, reused); a bad group name is refused like a bad task name."""
    from pydantic import ValidationError

    from deltalora.tasks import TaskSpec, load_suite
    from deltalora.zoo.build import resolved_config

    text = (FIX / "suite.yaml").read_text().replace("path: ", f"path: {FIX}/")
    grouped = tmp_path / "suite.yaml"
    grouped.write_text(
        text.replace("name: colours,", "name: colours, group: g,").replace("name: pick,", "name: pick, group: g,")
    )
    specs = {s.name: s for s in load_suite(grouped)}
    assert [specs[n].holdout_group for n in ("colours", "double", "pick")] == ["g", "double", "g"]
    assert resolved_config(cfg.model_copy(update={"suite": grouped})) == resolved_config(cfg)
    with pytest.raises(ValidationError, match="must be lowercase"):
        TaskSpec.model_validate({**specs["double"].model_dump(), "group": "Two Words"})


def test_reuse_copies_same_recipe_jobs_and_retrains_the_rest(built, cfg, tiny_qwen2, tmp_path, monkeypatch):
    src, src_entries = built
    import deltalora.zoo.build as build_mod

    trained = []
    real = build_mod.train_teacher

    def counting(backbone, pairs, tcfg, job_dir, **k):
        trained.append(Path(job_dir).relative_to(tmp_path).as_posix())
        return real(backbone, pairs, tcfg, job_dir, **k)

    monkeypatch.setattr(build_mod, "train_teacher", counting)
    other = cfg.model_copy(update={"seeds": [1, 2], "mixed": []})  # s1 jobs exist in src, s2 jobs do not
    got = build_zoo(other, tmp_path / "z2", progress=False, backbone=tiny_qwen2, reuse=[src])
    assert sorted(trained) == [f"z2/{t}/s2" for t in ("colours", "double", "pick")]
    listed = {e.id: e for e in read_manifest(tmp_path / "z2", verify=True)}
    assert set(listed) == {e.id for e in got} and len(listed) == 3 * 2 * 2
    by_id = {e.id: e for e in src_entries}
    for eid, e in listed.items():
        if "/s1/" in eid:
            assert e.sha256 == by_id[eid].sha256 and e.extra["reused_from"] == str(src)
            assert e.extra["train_seconds"] == by_id[eid].extra["train_seconds"]
        else:
            assert "reused_from" not in e.extra
    # a different recipe (learning rate) reuses nothing
    trained.clear()
    lr = cfg.model_copy(
        update={"seeds": [1], "mixed": [], "teacher": cfg.teacher.model_copy(update={"lr": cfg.teacher.lr * 2})}
    )
    build_zoo(lr, tmp_path / "z3", progress=False, backbone=tiny_qwen2, reuse=[src])
    assert len(trained) == 3
    # a tampered source adapter is not copied
    victim = next(e for e in src_entries if e.id == "pick/s1/step4")
    f = src / victim.path / "adapter_model.safetensors"
    blob = f.read_bytes()
    try:
        f.write_bytes(blob[:-8] + bytes(8))
        trained.clear()
        build_zoo(
            cfg.model_copy(update={"tasks": ["pick"], "seeds": [1], "mixed": []}),
            tmp_path / "z4",
            progress=False,
            backbone=tiny_qwen2,
            reuse=[src],
        )
        assert trained == ["z4/pick/s1"]
    finally:
        f.write_bytes(blob)
    with pytest.raises(ZooError, match="not a zoo directory"):
        build_zoo(other, tmp_path / "z5", progress=False, backbone=tiny_qwen2, reuse=[tmp_path])


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import deltalora.zoo.build as b
    from deltalora.zoo import build_zoo, load_zoo_config
    mode, n = sys.argv[3], int(sys.argv[4])
    calls = {"n": 0}
    if mode == "append":  # die between two manifest lines of one job
        real = b.append_entry
        def patched(*a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        b.append_entry = patched
    else:  # die after a job's adapters are on disk but before any is listed
        real = b.train_teacher
        def patched(*a, **k):
            out = real(*a, **k)
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        b.train_teacher = patched
    build_zoo(load_zoo_config(sys.argv[1]), sys.argv[2], progress=False)
    """
)


@pytest.mark.parametrize("mode,n", [("append", 4), ("train", 3)])
def test_resume_after_kill_9(built, tmp_path, mode, n, deltalora_home):
    _, full = built
    out = tmp_path / "killed"
    # the killed build runs at this process's thread count: CPU reductions (bf16 autocast) are bit-exact only at
    # a fixed thread count, and conftest sets torch's count regardless of OMP_NUM_THREADS
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, str(CONFIG), str(out), mode, str(n)], capture_output=True, env=env
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    partial = read_manifest(out, verify=True)  # whatever is listed is complete and verified
    assert 0 < len(partial) < len(full)
    build_zoo(load_zoo_config(CONFIG), out, progress=False)
    got = {e.id: e.sha256 for e in read_manifest(out, verify=True)}
    assert got == {e.id: e.sha256 for e in full}
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def test_torn_manifest_line_is_repaired(built, cfg, tiny_qwen2, tmp_path):
    import shutil

    src, full = built
    out = tmp_path / "torn"
    shutil.copytree(src, out)
    lines = (out / MANIFEST_NAME).read_bytes().splitlines(keepends=True)
    (out / MANIFEST_NAME).write_bytes(b"".join(lines[:-1]) + lines[-1][:20])  # a writer died mid-line
    build_zoo(cfg, out, progress=False, backbone=tiny_qwen2)
    assert {e.id for e in read_manifest(out, verify=True)} == {e.id for e in full}


def test_cli_build_and_list(tmp_path, deltalora_home):
    runner = CliRunner()
    out = tmp_path / "cli"
    cfg = tmp_path / "one.yaml"
    text = CONFIG.read_text().replace("suite: suite.yaml", f"suite: {FIX / 'suite.yaml'}")
    cfg.write_text(text.replace("mixed: [[colours, double]]", "mixed: []\ntasks: [double]"))
    r = runner.invoke(app, ["zoo", "build", "--config", str(cfg), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["adapters"] == 4 and [t["task"] for t in s["tasks"]] == ["double"]
    r = runner.invoke(app, ["zoo", "list", str(out), "--verify", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["adapters"] == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "\nunknown_key: 1\n")
    r = runner.invoke(app, ["zoo", "build", "--config", str(bad), "--out", str(tmp_path / "never")])
    assert r.exit_code != 0 and "unknown_key" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_cli_build_set_overrides_the_teacher_precision(tmp_path, deltalora_home):
    runner = CliRunner()
    cfg = tmp_path / "one.yaml"
    text = CONFIG.read_text().replace("suite: suite.yaml", f"suite: {FIX / 'suite.yaml'}")
    cfg.write_text(
        text.replace("mixed: [[colours, double]]", "mixed: []\ntasks: [double]\nseeds: [0]").replace(
            "seeds: [0, 1]\n", ""
        )
    )
    out = tmp_path / "fp32"
    r = runner.invoke(
        app, ["zoo", "build", "--config", str(cfg), "--out", str(out), "--json", "--set", "teacher.precision=fp32"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "zoo_config.json").read_text())["config"]["teacher"]["precision"] == "float32"
    assert {e.extra["precision"] for e in read_manifest(out)} == {"float32"}
    r = runner.invoke(
        app, ["zoo", "build", "--config", str(cfg), "--out", str(tmp_path / "never"), "--set", "teacher.precision=fp64"]
    )
    assert r.exit_code != 0 and "teacher.precision" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------------------------------- precision


def _one_task(cfg, precision: str, seeds=(0, 1)):
    return cfg.model_copy(
        update={
            "tasks": ["double"],
            "seeds": list(seeds),
            "mixed": [],
            "teacher": cfg.teacher.model_copy(update={"precision": precision}),
        }
    )


@pytest.fixture(scope="module")
def bf16_zoo(tiny_qwen2, tmp_path_factory, cfg):
    """Half of a two-job zoo (shard 0/2: double/s0), trained in bfloat16 — set explicitly, the same fingerprint as
    an ``auto`` that resolves to it; the other shard is still to be built."""
    out = tmp_path_factory.mktemp("zoo") / "bf16"
    return out, build_zoo(_one_task(cfg, "bfloat16"), out, shard=(0, 2), progress=False, backbone=tiny_qwen2)


@pytest.fixture
def auto_means(monkeypatch):
    """``auto_means("float32")``: a fresh process in which ``precision: auto`` resolves to that dtype."""
    import deltalora.backbones.precision as prec

    def set_to(name: str) -> None:
        monkeypatch.setattr(prec, "_DECIDED", {})
        monkeypatch.setattr(
            prec, "_decide_auto", lambda device: prec.PrecisionDecision(getattr(torch, name), f"mocked {name}")
        )

    return set_to


@pytest.fixture
def trained(monkeypatch):
    """The job dirs train_teacher is called for (it still trains)."""
    import deltalora.zoo.build as build_mod

    calls = []
    real = build_mod.train_teacher

    def counting(backbone, pairs, tcfg, job_dir, **k):
        calls.append((Path(job_dir).parent.name + "/" + Path(job_dir).name, k["precision"]))
        return real(backbone, pairs, tcfg, job_dir, **k)

    monkeypatch.setattr(build_mod, "train_teacher", counting)
    return calls


def test_zoo_records_the_effective_precision_never_auto(cfg, tiny_qwen2, tmp_path, auto_means, trained):
    auto_means("bfloat16")
    out = tmp_path / "z"
    entries = build_zoo(_one_task(cfg, "auto", seeds=(0,)), out, progress=False, backbone=tiny_qwen2)
    saved = json.loads((out / "zoo_config.json").read_text())["config"]["teacher"]
    assert saved["precision"] == "bfloat16" and "bf16_autocast" not in saved
    assert trained == [("double/s0", torch.bfloat16)]
    from deltalora.backbones import cpu_info

    for e in entries:
        assert e.extra["precision"] == "bfloat16" and e.extra["cpu"] == cpu_info()


def test_bf16_zoo_refuses_fp32_extension(bf16_zoo, cfg, tiny_qwen2, tmp_path, auto_means, trained):
    import shutil

    src, _ = bf16_zoo
    out = tmp_path / "z"
    shutil.copytree(src, out)
    auto_means("float32")  # e.g. the rest of the zoo built on an AVX2-only machine
    for setting in ("auto", "float32"):
        with pytest.raises(
            ZooError,
            match=r"different config \(differs in config\.teacher\.precision\); it trained in bfloat16, "
            rf"teacher.precision {setting} is float32 here: set teacher.precision=bfloat16",
        ) as err:
            build_zoo(_one_task(cfg, setting), out, shard=(1, 2), progress=False, backbone=tiny_qwen2)
        assert "\n" not in str(err.value)
    assert trained == []
    build_zoo(
        _one_task(cfg, "bf16"), out, shard=(1, 2), progress=False, backbone=tiny_qwen2
    )  # explicit bf16 extends it
    assert trained == [("double/s1", torch.bfloat16)]
    auto_means("bfloat16")
    got = build_zoo(
        _one_task(cfg, "auto"), out, progress=False, backbone=tiny_qwen2
    )  # and auto = bf16 accepts the result
    assert [e.id for e in got] == [f"double/s{s}/step{t}" for s in (0, 1) for t in (2, 4)] and len(trained) == 1


@pytest.mark.parametrize("flag,dtype", [(True, "bfloat16"), (False, "float32")])
def test_old_saved_config_with_bf16_autocast_matches_its_effective_precision(
    bf16_zoo, cfg, tiny_qwen2, tmp_path, auto_means, trained, flag, dtype
):
    import shutil

    out = tmp_path / "old"
    shutil.copytree(bf16_zoo[0], out)
    path = out / "zoo_config.json"
    saved = json.loads(path.read_text())  # as a zoo built before teacher.precision saved it
    teacher = saved["config"]["teacher"]
    del teacher["precision"]
    teacher["bf16_autocast"] = flag
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    old_bytes = path.read_bytes()
    other = "float32" if dtype == "bfloat16" else "bfloat16"
    auto_means(other)
    with pytest.raises(ZooError, match=rf"differs in config\.teacher\.precision\); it trained in {dtype}"):
        build_zoo(_one_task(cfg, "auto"), out, shard=(0, 2), progress=False, backbone=tiny_qwen2)
    auto_means(dtype)
    got = build_zoo(
        _one_task(cfg, "auto"), out, shard=(0, 2), progress=False, backbone=tiny_qwen2
    )  # the finished shard is accepted
    assert [e.id for e in got] == [e.id for e in bf16_zoo[1]] and trained == []
    assert path.read_bytes() == old_bytes  # read, never rewritten


def test_reuse_copies_only_jobs_of_the_same_effective_precision(
    bf16_zoo, cfg, tiny_qwen2, tmp_path, auto_means, trained
):
    import shutil

    src, src_entries = bf16_zoo
    auto_means("float32")
    build_zoo(_one_task(cfg, "auto", seeds=(0,)), tmp_path / "fp32", progress=False, backbone=tiny_qwen2, reuse=[src])
    assert trained == [("double/s0", torch.float32)]  # a bf16 job is not an fp32 one: retrained
    assert {e.extra["precision"] for e in read_manifest(tmp_path / "fp32")} == {"float32"}
    trained.clear()
    auto_means("bfloat16")
    got = build_zoo(
        _one_task(cfg, "auto", seeds=(0,)), tmp_path / "bf16", progress=False, backbone=tiny_qwen2, reuse=[src]
    )
    assert trained == [] and [e.sha256 for e in got] == [e.sha256 for e in src_entries]
    assert all(e.extra["reused_from"] == str(src) and e.extra["precision"] == "bfloat16" for e in got)
    # a source zoo from before teacher.precision (bf16_autocast: true) is reused by a build that trains in bf16
    old = tmp_path / "old-src"
    shutil.copytree(src, old)
    saved = json.loads((old / "zoo_config.json").read_text())
    saved["config"]["teacher"]["bf16_autocast"] = saved["config"]["teacher"].pop("precision") == "bfloat16"
    (old / "zoo_config.json").write_text(json.dumps(saved))
    got = build_zoo(
        _one_task(cfg, "auto", seeds=(0,)), tmp_path / "from-old", progress=False, backbone=tiny_qwen2, reuse=[old]
    )
    assert trained == [] and all(e.extra["reused_from"] == str(old) for e in got)


# ------------------------------------------------------------------------------------------- DnD import


def _dnd_file(path: Path, w: LoraWeights) -> None:
    """Write ``w`` the way DnD's post_process_ckpts.py leaves a checkpoint: PEFT keys, no config."""
    t = {}
    for s in w.layout.slots:
        t[s.peft_key_a] = w.A[s.key].contiguous()
        t[s.peft_key_b] = w.B[s.key].contiguous()
    save_file(t, str(path))


def test_dnd_import(tiny_qwen2, tmp_path):
    layout = derive_layout(tiny_qwen2.arch, LoraSpec(rank=4, alpha=8, targets="q,k,v,o,gate,up,down"))
    root = tmp_path / "data" / "common"
    weights = {}
    for ds in ("ARC-c", "OBQA"):
        (root / ds).mkdir(parents=True)
        for step in (100, 200, 300):
            w = LoraWeights.random(layout, std=0.05, seed=step + len(ds))
            _dnd_file(root / ds / f"{step}.safetensors", w)
            weights[(ds, step)] = w
    (root / "ARC-c" / "ARC-c_train.json").write_text(json.dumps([{"prompt": "Q?", "response": "A", "system": ""}]))
    out = tmp_path / "zoo"
    entries = import_dnd(root, out, backbone="tiny-qwen2", families={"ARC-c": "science"})
    assert sorted(e.id for e in entries) == sorted(f"{d}/s0/step{s}" for d, s in weights)
    for e in read_manifest(out, verify=True):
        got = load_adapter(out / e.path, arch=tiny_qwen2.arch)
        want = weights[(e.task, e.step)]
        assert got.layout.spec.alpha == 8  # LLaMA-Factory's default 2 * rank
        assert all(torch.equal(got.A[k], want.A[k]) and torch.equal(got.B[k], want.B[k]) for k in want.A)
    fams = {e.task: e.family for e in entries}
    assert fams == {"ARC-c": "science", "OBQA": "dnd"}
    assert "condition" in next(e for e in entries if e.task == "ARC-c").extra
    assert len(import_dnd(root, out, backbone="tiny-qwen2")) == 6  # idempotent
    assert len(read_manifest(out)) == 6


def test_dnd_import_refuses_bad_input(tiny_qwen2, tmp_path):
    layout = derive_layout(tiny_qwen2.arch, LoraSpec(rank=4, alpha=8, targets="q,v"))
    w = LoraWeights.random(layout, std=0.05, seed=0)
    d = tmp_path / "ds"
    d.mkdir()
    (d / "1.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ZooError, match="never unpickles"):
        import_dnd(d, tmp_path / "z1")
    (d / "1.bin").unlink()
    (d / "1.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ZooError, match="not a readable safetensors"):
        import_dnd(d, tmp_path / "z2")
    save_file({"model.layers.0.mlp.weird.lora_A.weight": torch.zeros(4, 64)}, str(d / "1.safetensors"))
    with pytest.raises(ZooError, match="unrecognised key"):
        import_dnd(d, tmp_path / "z3")
    _dnd_file(d / "1.safetensors", w)
    with pytest.raises(ZooError, match="not fit"):
        import_dnd(d, tmp_path / "z4", backbone="smollm2-135m-instruct")  # shapes, from the catalog, no download
    assert not (tmp_path / "z4" / MANIFEST_NAME).exists()


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs" / "zoo").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_zoo_configs_are_valid(path):
    cfg = load_zoo_config(path)
    jobs = plan_jobs(cfg)  # every named task and mixed component exists in the suite
    assert jobs and len(cfg.tail_steps()) == cfg.teacher.checkpoints
    assert len({j.family for j in jobs if not j.mixed}) >= 5  # the benchmark claims coverage of every family
    assert cfg.teacher.precision == "auto" and "bf16_autocast" not in path.read_text()  # chosen per machine
