"""The task suite: splits, sources (reasoning-gym, BIG-bench from a fake sdist, HumanEval, user files),
formatting, the default suite and the ``tasks`` CLI. Offline and fast: no real BIG-bench download."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deltalora.backbones.tiny import byte_level_tokenizer
from deltalora.errors import ConfigError, DeltaLoraError
from deltalora.tasks import (
    Task,
    TaskError,
    TaskItem,
    TaskSpec,
    build_task,
    constant_answer_score,
    fetch_bigbench,
    format_prompt,
    format_target,
    load_suite,
    mc_item,
    normalise,
    read_dnd_json,
    read_jsonl,
    split_items,
    stable_seed,
)
from deltalora.tasks.items import prompt_key
from deltalora.tasks.sources import bigbench as bb
from deltalora.tasks.sources import pinned

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


def _pool(n: int, dup_every: int = 0) -> list[TaskItem]:
    items = [TaskItem(f"question {i}", str(i)) for i in range(n)]
    if dup_every:
        items += [TaskItem(f"  QUESTION   {i} ", "dup") for i in range(0, n, dup_every)]
    return items


def _keys(items) -> set[str]:
    return {prompt_key(it.prompt) for it in items}


# ---- splits ---------------------------------------------------------------------------------------------


def test_splits_disjoint_sized_and_deterministic():
    pool = _pool(300, dup_every=7)  # duplicates differ only in case/whitespace
    a = split_items("t", pool, 0, 100, 30, 50)
    assert {k: len(v) for k, v in a.items()} == {"train": 100, "condition": 30, "eval": 50}
    keys = [_keys(a[s]) for s in ("train", "condition", "eval")]
    assert all(len(k) == n for k, n in zip(keys, (100, 30, 50), strict=True))
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert split_items("t", pool, 0, 100, 30, 50) == a
    assert split_items("t", pool, 1, 100, 30, 50)["eval"] != a["eval"]
    assert split_items("other", pool, 0, 100, 30, 50)["eval"] != a["eval"]
    # eval is cut first: a different train size leaves eval unchanged
    assert split_items("t", pool, 0, 10, 30, 50)["eval"] == a["eval"]


def test_stable_seed_is_stable():
    assert stable_seed("split", "t", 0) == stable_seed("split", "t", 0) != stable_seed("split", "t", 1)
    assert stable_seed("a") == int.from_bytes(hashlib.sha256(b"a").digest()[:8], "big")


def test_shrink_train_first_with_warning():
    with pytest.warns(UserWarning, match="shrunk"):
        s = split_items("t", _pool(120), 0, 256, 30, 50)
    assert {k: len(v) for k, v in s.items()} == {"train": 40, "condition": 30, "eval": 50}
    with pytest.warns(UserWarning, match="shrunk"):
        s = split_items("t", _pool(60), 0, 256, 30, 50)
    assert {k: len(v) for k, v in s.items()} == {"train": 0, "condition": 10, "eval": 50}
    with pytest.raises(TaskError, match="condition"):
        split_items("t", _pool(50), 0, 10, 30, 50)


def test_normalise():
    assert normalise("  Paris.  ") == normalise("paris") == "paris"
    assert normalise("1,000!?") == "1,000"
    assert normalise("A  B") == "a b"


# ---- reasoning-gym ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["letter_counting", "gcd"])
def test_reasoning_gym_source_and_scoring(dataset):
    spec = TaskSpec(
        name=f"rg_{dataset}",
        family="math",
        kind="short",
        source="reasoning_gym",
        args={"dataset": dataset},
        n_train=20,
        n_condition=10,
        n_eval=10,
    )
    task = build_task(spec, seed=3)
    assert task.sizes() == {"train": 20, "condition": 10, "eval": 10}
    assert task.scorer == "reasoning_gym"
    item = task.eval[0]
    json.dumps(item.to_dict())  # JSON-able
    assert task.score(item, item.answer) == 1.0
    assert task.score(item, "not an answer at all") == 0.0
    assert build_task(spec, seed=3).eval == task.eval
    assert build_task(spec, seed=4).eval != task.eval
    assert not (_keys(task.train) & _keys(task.eval))


def test_reasoning_gym_skips_none_answers():
    spec = TaskSpec(
        name="rg_prop",
        family="logic",
        kind="short",
        source="reasoning_gym",
        args={"dataset": "propositional_logic"},
        n_train=1,
        n_condition=1,
        n_eval=1,
    )
    with pytest.raises(TaskError, match="only 0 distinct items"):
        build_task(spec)


def test_reasoning_gym_unknown_dataset():
    spec = TaskSpec(
        name="rg_nope",
        family="math",
        kind="short",
        source="reasoning_gym",
        args={"dataset": "no_such_generator"},
        n_train=1,
        n_condition=1,
        n_eval=1,
    )
    with pytest.raises(TaskError, match="no_such_generator"):
        build_task(spec)


# ---- BIG-bench from a fake sdist ----------------------------------------------------------------------------

MC_TASK = {
    "name": "fake_mc",
    "task_prefix": "Answer the question.",
    "examples": [
        {"input": f"Is {i} even?", "target_scores": {"yes": int(i % 2 == 0), "no": int(i % 2 == 1)}} for i in range(30)
    ]
    + [
        {"input": "no gold", "target_scores": {"a": 0, "b": 0}},
        {"input": "two golds", "target_scores": {"a": 1, "b": 1}},
    ],
}
GEN_TASK = {
    "examples": [{"input": f"{i} + 1 =", "target": [str(i + 1), f"{i + 1}."]} for i in range(20)]
    + [{"input": "single", "target": "one"}]
}
SUB_TASK = {"examples": [{"input": f"sub {i}", "target": f"s{i}"} for i in range(5)]}


def _fake_sdist(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / bb.BIGBENCH_SDIST
    members = {
        "fake_mc/task.json": MC_TASK,
        "fake_gen/task.json": GEN_TASK,
        "parent/task.json": {"name": "parent", "subtasks": []},
        "parent/sub_a/task.json": SUB_TASK,
        "fake_mc/README.md": "not json",
    }
    with tarfile.open(path, "w:gz") as tar:
        for rel, obj in members.items():
            data = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
            info = tarfile.TarInfo(f"{bb.MEMBER_ROOT}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_bigbench(tmp_path, deltalora_home, monkeypatch):
    sdist, sha = _fake_sdist(tmp_path)
    calls = []

    def downloader(dest: Path) -> Path:
        calls.append(dest)
        out = dest / sdist.name
        out.write_bytes(sdist.read_bytes())
        return out

    monkeypatch.setattr(bb, "BIGBENCH_SHA256", sha)
    monkeypatch.setattr(bb, "download_from_index", downloader)
    return sha, calls


def test_bigbench_one_pass_extraction_and_cache(fake_bigbench, deltalora_home, monkeypatch):
    sha, calls = fake_bigbench
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    out = fetch_bigbench(["fake_mc", "fake_gen", "parent/sub_a"])
    assert len(opened) == 1 and len(calls) == 1  # one download, one pass for three tasks
    assert out["parent/sub_a"] == deltalora_home / "tasks" / "bigbench" / sha[:16] / "parent" / "sub_a" / "task.json"
    assert json.loads(out["fake_gen"].read_text()) == GEN_TASK
    assert (deltalora_home / "downloads" / bb.BIGBENCH_SDIST).is_file()
    fetch_bigbench(["fake_mc"])  # cached: no download, no archive pass
    assert len(opened) == 1 and len(calls) == 1
    out["fake_mc"].unlink()
    fetch_bigbench(["fake_mc"])  # re-extract from the kept sdist, no new download
    assert len(opened) == 2 and len(calls) == 1


def test_bigbench_sha_mismatch_caches_nothing(fake_bigbench, deltalora_home, monkeypatch):
    monkeypatch.setattr(bb, "BIGBENCH_SHA256", "0" * 64)
    with pytest.raises(TaskError, match="sha256") as err:
        fetch_bigbench(["fake_mc"])
    assert "\n" not in str(err.value)
    left = [p for p in deltalora_home.rglob("*") if p.is_file()] if deltalora_home.exists() else []
    assert left == []


def test_an_index_that_no_longer_serves_the_sdist_gets_a_one_line_error_with_the_fix(deltalora_home, monkeypatch):
    # what the package index here answered from 2026-12 on: the bigbench project page lists only the 0.0.1 placeholder
    page = {"files": [{"filename": "bigbench-0.0.1.tar.gz", "url": "https://files.example/bigbench-0.0.1.tar.gz"}]}
    fetched = []

    def urlopen(req, timeout=None):
        fetched.append(getattr(req, "full_url", req))
        return io.BytesIO(json.dumps(page).encode())

    monkeypatch.setattr(pinned.urllib.request, "urlopen", urlopen)
    with pytest.raises(TaskError) as err:
        fetch_bigbench(["fake_mc"])
    msg = str(err.value)
    assert "\n" not in msg and "bigbench-0.0.1.tar.gz" in msg and bb.BIGBENCH_SHA256 in msg
    assert str(deltalora_home / "downloads") in msg  # where to put a copy by hand
    assert len(fetched) == 1  # the page only: nothing else was downloaded
    left = [p for p in deltalora_home.rglob("*") if p.is_file()] if deltalora_home.exists() else []
    assert left == []


def test_bigbench_missing_task_and_bad_name(fake_bigbench):
    with pytest.raises(TaskError, match="no_such_task"):
        fetch_bigbench(["fake_mc", "no_such_task"])
    with pytest.raises(TaskError, match="bad BIG-bench task name"):
        fetch_bigbench(["../etc"])


def test_bigbench_mc_and_generative_tasks(fake_bigbench):
    mc = TaskSpec(
        name="bb_fake_mc",
        family="logic",
        kind="mc",
        source="bigbench",
        args={"task": "fake_mc", "task_prefix": True},
        n_train=10,
        n_condition=5,
        n_eval=10,
    )
    with pytest.warns(UserWarning, match="skipped 2"):
        task = build_task(mc)
    assert task.sizes() == {"train": 10, "condition": 5, "eval": 10}
    item = task.eval[0]
    assert item.prompt.startswith("Answer the question.\n\nIs ")
    assert sorted(item.choices) == ["no", "yes"] and item.choices[item.gold_index] == item.answer
    assert task.score(item, item.gold_index) == 1.0 and task.score(item, 1 - item.gold_index) == 0.0
    assert task.score(item, item.answer) == 1.0

    gen = TaskSpec(
        name="bb_fake_gen",
        family="math",
        kind="short",
        source="bigbench",
        args={"task": "fake_gen"},
        n_condition=5,
        n_eval=10,
    )
    with pytest.warns(UserWarning, match="shrunk"):
        task = build_task(gen)
    assert task.sizes() == {"train": 6, "condition": 5, "eval": 10}
    item = next(it for it in task.eval + task.condition + task.train if it.prompt != "single")
    assert task.score(item, item.meta["targets"][1]) == 1.0  # any listed target counts
    assert task.score(item, f"  {item.answer}. ") == 1.0
    assert task.score(item, "wrong") == 0.0

    sub = TaskSpec(
        name="bb_sub",
        family="logic",
        kind="short",
        source="bigbench",
        args={"task": "parent/sub_a"},
        n_train=0,
        n_condition=2,
        n_eval=3,
    )
    assert build_task(sub).sizes() == {"train": 0, "condition": 2, "eval": 3}


def test_bigbench_parent_task_has_no_examples(fake_bigbench):
    path = fetch_bigbench(["parent"])["parent"]
    with pytest.raises(TaskError, match="subtasks"):
        bb.read_task_json(path)


# ---- HumanEval ----------------------------------------------------------------------------------------------


def test_humaneval_loads_164_problems():
    spec = TaskSpec(
        name="humaneval", family="code", kind="code", source="humaneval", n_train=32, n_condition=32, n_eval=100
    )
    task = build_task(spec)
    assert sum(task.sizes().values()) == 164
    item = task.eval[0]
    assert {"task_id", "prompt", "test", "entry_point"} <= set(item.meta["problem"])
    assert item.prompt == item.meta["problem"]["prompt"]
    with pytest.raises(NotImplementedError):
        task.score(item, item.answer)


# ---- user files ---------------------------------------------------------------------------------------------


def test_jsonl_short_and_mc():
    kind, items = read_jsonl(FIXTURES / "short.jsonl")
    assert kind == "short" and [it.answer for it in items] == ["4", "Paris", "tac"]
    kind, items = read_jsonl(FIXTURES / "mc.jsonl")
    assert kind == "mc"
    assert (items[0].answer, items[0].gold_index) == ("apple", 1)  # gold given as text
    assert (items[1].answer, items[1].gold_index) == ("red", 0)  # gold given as index


def test_dnd_json():
    items = read_dnd_json(FIXTURES / "dnd.json")
    assert [it.answer for it in items] == ["cat", "9", "red"]
    assert items[0].meta == {"system": "You are a translator."} and items[1].meta == {} == items[2].meta


@pytest.mark.parametrize(
    "name, match",
    [
        ("nope.jsonl", "file not found"),
        ("empty.jsonl", "file is empty"),
        ("not_utf8.jsonl", r":2: not UTF-8"),
        ("bad_json.jsonl", r":3: not valid JSON"),
        ("not_object.jsonl", r":1: expected a JSON object"),
        ("missing_field.jsonl", r":2: missing field 'answer'"),
        ("empty_field.jsonl", r":1: field 'prompt' is empty"),
        ("wrong_type.jsonl", r":1: field 'answer' must be a string"),
        ("mc_not_in_choices.jsonl", r":1: answer 'banana' is not one of the choices"),
        ("mc_index_out_of_range.jsonl", r":1: answer index 2 is out of range"),
        ("mc_bad_choices.jsonl", r":1: 'choices' must be a list"),
        ("mixed_kinds.jsonl", r":2: record is mc but the task is short"),
    ],
)
def test_jsonl_malformed(name, match):
    with pytest.raises(TaskError, match=match) as err:
        read_jsonl(FIXTURES / name)
    msg = str(err.value)
    assert "\n" not in msg and name in msg
    assert isinstance(err.value, DeltaLoraError)


@pytest.mark.parametrize(
    "name, match",
    [
        ("dnd_bad_json.json", r":3: not valid JSON"),
        ("dnd_not_list.json", "expected a non-empty JSON array"),
        ("dnd_missing_response.json", "entry 1: missing field 'response'"),
        ("dnd_wrong_type.json", "entry 0: field 'system' must be a string"),
        ("empty.jsonl", "file is empty"),
    ],
)
def test_dnd_json_malformed(name, match):
    with pytest.raises(TaskError, match=match) as err:
        read_dnd_json(FIXTURES / name)
    assert "\n" not in str(err.value) and name in str(err.value)


def test_user_file_suite_resolves_relative_paths():
    specs = load_suite(FIXTURES / "suite_small.yaml")
    assert Path(specs[0].args["path"]).is_absolute()
    mc = build_task(specs[1])
    assert mc.kind == "mc" and mc.scorer == "mc" and mc.sizes() == {"train": 0, "condition": 1, "eval": 1}
    short = build_task(specs[0])
    assert short.scorer == "exact" and short.sizes() == {"train": 1, "condition": 1, "eval": 1}


# ---- formatting ---------------------------------------------------------------------------------------------


def _task(kind: str, items: list[TaskItem]) -> Task:
    return Task("t", "logic", kind, "", "jsonl", {}, [], [], items, scorer="mc" if kind == "mc" else "exact")


def test_format_prompt_mc_and_short():
    tok = byte_level_tokenizer()
    _, items = read_jsonl(FIXTURES / "mc.jsonl")
    task = _task("mc", items)
    text = format_prompt(tok, task, items[0])
    assert "Which is a fruit?" in text
    assert all(f"{letter}. {c}" in text for letter, c in zip("ABC", items[0].choices, strict=True))
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert format_target(task, items[0]) == "apple"
    assert format_prompt(tok, task, items[0]) == text  # deterministic

    short = TaskItem("What is 2 + 2?", "4")
    text = format_prompt(tok, _task("short", [short]), short)
    assert "What is 2 + 2?" in text and "Answer with only the final answer." in text
    assert text.endswith("<|im_start|>assistant\n")


def test_format_prompt_system_message():
    tok = byte_level_tokenizer()
    items = read_dnd_json(FIXTURES / "dnd.json")
    text = format_prompt(tok, _task("short", items), items[0])
    assert text.startswith("<|im_start|>system\nYou are a translator.<|im_end|>")
    assert "<|im_start|>system" not in format_prompt(tok, _task("short", items), items[1])


# ---- the default suite and the CLI ----------------------------------------------------------------------------


def test_default_suite_validates():
    specs = load_suite()
    names = [s.name for s in specs]
    assert len(specs) >= 24 and len(set(names)) == len(names)
    assert len({s.family for s in specs}) >= 5
    assert all(s.n_condition + s.n_eval >= 120 for s in specs)


def test_suite_validation_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - {name: a, family: math, kind: short, source: nope}\n")
    with pytest.raises(ConfigError, match="unknown task source 'nope'"):
        load_suite(bad)
    bad.write_text("tasks:\n  - {name: a, family: math, kind: mc, source: humaneval}\n")
    with pytest.raises(ConfigError, match="not 'mc'"):
        load_suite(bad)
    bad.write_text("tasks:\n  - {name: a, family: math, kind: short, source: bigbench, args: {tsk: x}}\n")
    with pytest.raises(ConfigError, match="tsk"):
        load_suite(bad)
    bad.write_text(
        "tasks:\n  - {name: a, family: code, kind: code, source: humaneval}\n"
        "  - {name: a, family: code, kind: code, source: humaneval}\n"
    )
    with pytest.raises(ConfigError, match="unique"):
        load_suite(bad)


def test_suite_selects_from_a_base_suite(tmp_path):
    (tmp_path / "sub").mkdir()
    for f in ("short.jsonl", "mc.jsonl"):
        (tmp_path / "sub" / f).write_text((FIXTURES / f).read_text())
    (tmp_path / "sub" / "all.yaml").write_text(
        "tasks:\n"
        "  - {name: c1, family: code, kind: code, source: humaneval}\n"
        "  - {name: u1, family: knowledge, kind: short, source: jsonl, args: {path: short.jsonl}, "
        "n_train: 1, n_condition: 1, n_eval: 1}\n"
        "  - {name: u2, family: knowledge, kind: mc, source: jsonl, args: {path: mc.jsonl}, "
        "n_train: 0, n_condition: 1, n_eval: 1}\n"
    )
    sel = tmp_path / "sel.yaml"
    sel.write_text(
        "base: sub/all.yaml\nkeep: [u2, u1]\ntasks:\n  - {name: c2, family: code, kind: code, source: humaneval}\n"
    )
    specs = load_suite(sel)
    assert [x.name for x in specs] == ["u1", "u2", "c2"]  # base order, then the suite's own tasks
    assert specs[0].args["path"] == str((tmp_path / "sub" / "short.jsonl").resolve())  # relative to the base's folder
    assert specs[0] == load_suite(tmp_path / "sub" / "all.yaml")[1]  # the very same spec, not a copy that can drift
    sel.write_text("base: sub/all.yaml\n")
    assert [x.name for x in load_suite(sel)] == ["c1", "u1", "u2"]
    sel.write_text("base: sub/all.yaml\nkeep: [u1, nope]\n")
    with pytest.raises(TaskError, match="nope"):
        load_suite(sel)
    sel.write_text("keep: [u1]\ntasks:\n  - {name: c2, family: code, kind: code, source: humaneval}\n")
    with pytest.raises(ConfigError, match="keep needs base"):
        load_suite(sel)
    sel.write_text("base: sel.yaml\n")
    with pytest.raises(TaskError, match="cycle"):
        load_suite(sel)
    sel.write_text("base: sub/all.yaml\ntasks:\n  - {name: c1, family: code, kind: code, source: humaneval}\n")
    with pytest.raises(TaskError, match="unique"):
        load_suite(sel)


def test_cli_list_json_reads_no_data(deltalora_home):
    from deltalora.cli.tasks import app

    res = CliRunner().invoke(app, ["list", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) >= 24 and {"name", "family", "kind", "source", "train", "condition", "eval"} <= set(rows[0])
    assert not deltalora_home.exists()  # listing downloads nothing


def test_cli_list_shows_the_hold_out_groups(deltalora_home):
    from deltalora.cli.tasks import app

    suite = Path(__file__).resolve().parents[1] / "configs" / "tasks" / "large.yaml"
    res = CliRunner().invoke(app, ["list", "--suite", str(suite)])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line.split() for line in res.output.splitlines()[1:-1]}
    assert lines["evals_portuguese_sarcasm"][-1] == lines["evals_sarcasm"][-1] == "evals_sarcasm"
    assert lines["rg_number_format"][-1] == "-"  # a task on its own
    groups = len({s.holdout_group for s in load_suite(suite)})
    assert res.output.splitlines()[-1].endswith(f"{groups} hold-out groups (siblings are held out together)")
    assert not deltalora_home.exists()


def test_cli_show_and_errors():
    from deltalora.cli.tasks import app

    suite = str(FIXTURES / "suite_small.yaml")
    res = CliRunner().invoke(app, ["show", "user_mc", "--suite", suite, "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    assert shown["kind"] == "mc" and shown["items"][0]["prompt"].endswith("<|im_start|>assistant\n")
    res = CliRunner().invoke(app, ["show", "missing", "--suite", suite])
    assert res.exit_code == 2 and "no task named 'missing'" in res.output


def test_build_is_warning_free_for_user_suite():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_task(load_suite(FIXTURES / "suite_small.yaml")[1])


def _screen_suite(tmp_path: Path) -> Path:
    """Three user tasks of 12 condition items: distinct short answers, mc golds spread over three positions, and a
    short task whose every answer but one is "yes" (the constant answer "yes" scores >= 11/12 on it). n_train 0: the
    items a split does not take are left over."""
    short = [{"prompt": f"q{i}?", "answer": f"a{i}"} for i in range(13)]
    mc = [{"prompt": f"m{i}?", "choices": ["x", "y", "z"], "answer": i % 3} for i in range(15)]
    major = [{"prompt": f"y{i}?", "answer": "no" if i == 0 else "yes"} for i in range(13)]
    for name, rows in (("short", short), ("mc", mc), ("major", major)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sizes = "n_train: 0, n_condition: 12, n_eval: 1"
    suite = tmp_path / "candidates.yaml"
    suite.write_text(
        "tasks:\n"
        f"  - {{name: user_short, family: a, kind: short, source: jsonl, args: {{path: short.jsonl}}, {sizes}}}\n"
        f"  - {{name: user_mc, family: a, kind: mc, source: jsonl, args: {{path: mc.jsonl}}, {sizes}}}\n"
        f"  - {{name: user_major, family: b, kind: short, source: jsonl, args: {{path: major.jsonl}}, {sizes}}}\n"
    )
    return suite


SCREEN_SUMMARY = {
    "backbone": "tiny-qwen2",
    "teacher": {"lora": {"rank": 2}, "steps": 4},
    "limit": 50,
    "split": "condition",
}


def _select(tmp_path: Path, rows: list[dict], *extra: str):
    """Run benchmarks/select_suite.py on a screen of ``rows`` over the three tasks of :func:`_screen_suite`."""
    import subprocess
    import sys

    screen = tmp_path / "screen.json"
    screen.write_text(json.dumps({"rows": rows, "summary": SCREEN_SUMMARY}))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "select_suite.py"
    cmd = [sys.executable, str(script), "--screen", str(screen), "--candidates", str(_screen_suite(tmp_path))]
    return subprocess.run(
        cmd + ["--out", str(tmp_path / "cfg" / "default.yaml"), *extra], capture_output=True, text=True
    )


def _row(task: str, base: float, teacher: float, worse: bool = False) -> dict:
    gain = round(100 * (teacher - base), 1)
    return {
        "task": task,
        "gain_points": gain,
        "worse_than_base": ["s0"] if worse else [],
        "base": base,
        "teacher_mean": teacher,
    }


def test_select_suite_keeps_measured_winners_and_refuses_too_few(tmp_path):
    out = tmp_path / "cfg" / "default.yaml"
    rows = [_row("user_short", 0.1, 0.22), _row("user_mc", 0.5, 0.53), _row("user_major", 0.1, 0.05, worse=True)]
    res = _select(tmp_path, rows, "--min-tasks", "1", "--min-families", "1")
    assert res.returncode == 0, res.stderr
    assert [s.name for s in load_suite(out)] == ["user_short"]  # +3 points is not a measured win
    assert "drop user_mc" in out.read_text()
    out.unlink()
    res = _select(tmp_path, rows, "--min-tasks", "2", "--min-families", "1")
    assert res.returncode != 0 and "only 1 tasks" in res.stderr and not out.exists()
    res = _select(tmp_path, rows[:2], "--min-tasks", "1", "--min-families", "1")
    assert res.returncode != 0 and "user_major" in res.stderr and not out.exists()
    # a second screen of the same recipe (another precision and init: how, not what) supplies the task the first
    # did not screen; a task in both keeps the first file's row (user_short: +12, not the later -4)
    later = tmp_path / "later.json"
    later_rows = [_row("user_mc", 0.5, 0.59), _row("user_short", 0.1, 0.06, worse=True)]
    same = {**SCREEN_SUMMARY, "teacher": {**SCREEN_SUMMARY["teacher"], "precision": "bfloat16", "init": "canonical"}}
    later.write_text(json.dumps({"rows": later_rows, "summary": same}))
    first = [rows[0], rows[2]]
    res = _select(tmp_path, first, "--screen", str(later), "--min-tasks", "2", "--min-families", "1")
    assert res.returncode == 0, res.stderr
    assert [s.name for s in load_suite(out)] == ["user_short", "user_mc"] and "+9.0" in out.read_text()
    out.unlink()
    later.write_text(json.dumps({"rows": later_rows, "summary": {**same, "limit": 20}}))
    res = _select(tmp_path, first, "--screen", str(later), "--min-tasks", "2", "--min-families", "1")
    assert res.returncode != 0 and "another recipe" in res.stderr and "limit" in res.stderr and not out.exists()


def test_select_suite_drops_a_teacher_that_only_gives_the_commonest_answer(tmp_path):
    """user_major gains +80 over base, but "yes" to every item already scores >= 11/12: the teacher's 0.90 is no
    better than a constant answer, so it is dropped; user_mc's 0.50 is >= +5 over its best constant position (at
    most 5 of 12 golds), so it stays. The floor is a flag: -inf keeps the old base-only rule."""
    out = tmp_path / "cfg" / "default.yaml"
    rows = [_row("user_short", 0.1, 0.22), _row("user_mc", 0.2, 0.5), _row("user_major", 0.1, 0.9)]
    res = _select(tmp_path, rows, "--min-tasks", "2", "--min-families", "1")
    assert res.returncode == 0, res.stderr
    assert [s.name for s in load_suite(out)] == ["user_short", "user_mc"]
    text = out.read_text()
    assert "drop user_major" in text and "over `const`" in text
    const_line = next(line for line in text.splitlines() if "user_mc" in line and line.startswith("# keep"))
    mc = build_task(next(t for t in load_suite(tmp_path / "candidates.yaml") if t.name == "user_mc"))
    assert const_line.split()[5] == f"{constant_answer_score(mc, mc.condition)[0]:.2f}"  # the screened items' const
    out.unlink()
    res = _select(tmp_path, rows, "--min-tasks", "3", "--min-families", "2")
    assert res.returncode != 0 and "over the constant answer" in res.stderr and not out.exists()
    res = _select(tmp_path, rows, "--min-tasks", "3", "--min-families", "2", "--min-gain-over-constant=-inf")
    assert res.returncode == 0, res.stderr
    assert [s.name for s in load_suite(out)] == ["user_short", "user_mc", "user_major"]


def test_constant_answer_score_is_the_best_single_answer():
    def short(answers: list, targets: dict | None = None) -> Task:
        items = [
            TaskItem(f"q{i}", a, None, {"targets": (targets or {}).get(i)} if targets else {})
            for i, a in enumerate(answers)
        ]
        return Task("t", "f", "short", "", "jsonl", {}, [], items, [])

    task = short(["yes", "yes", "no", "yes", "maybe"])
    assert constant_answer_score(task, task.condition) == (0.6, "yes")
    # targets count: "No." normalises to "no", and "nope" is also accepted for item 3
    task = short(["No.", "no", "yes", "nope"], targets={3: ["nope", "no"]})
    assert constant_answer_score(task, task.condition) == (0.75, "No.")
    golds = [1, 1, 0, 2]
    items = [mc_item(f"m{i}", ["a", "b", "c"], g) for i, g in enumerate(golds)]
    task = Task("m", "f", "mc", "", "jsonl", {}, [], items, [], scorer="mc")
    assert constant_answer_score(task, task.condition) == (0.5, 1)
    assert constant_answer_score(task, []) == (0.0, None)


def test_a_screen_skips_the_tasks_an_earlier_screen_of_the_same_recipe_scored(tmp_path, monkeypatch):
    """benchmarks/zoo.py --skip-screened: the larger screen builds and scores only the tasks the earlier screen did
    not, and refuses an earlier screen with another recipe (one line naming the file and what differs)."""
    import importlib.util

    from deltalora.zoo import load_zoo_config
    from deltalora.zoo.build import selected_specs

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location("bench_zoo", bench / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    cfg = load_zoo_config(Path(__file__).parent / "fixtures" / "zoo" / "tiny.yaml")
    names = [s.name for s in selected_specs(cfg)[0]]
    summary = {
        "backbone": cfg.backbone,
        "teacher": {**cfg.teacher.model_dump(mode="json"), "precision": "bfloat16", "init": "per_job"},
        "seeds": cfg.seeds,
        "subset": cfg.subset,
        "limit": 50,
        "split": "condition",
    }
    earlier = tmp_path / "screen.json"
    earlier.write_text(json.dumps({"summary": summary, "rows": [{"task": names[0]}]}))
    left = zoo.skip_screened(cfg, [earlier], 50, "condition")
    assert [s.name for s in selected_specs(left)[0]] == names[1:] and cfg.tasks is None
    with pytest.raises(SystemExit, match=r"screen.json: screened with another recipe \(limit differ\)"):
        zoo.skip_screened(cfg, [earlier], 20, "condition")
    earlier.write_text(json.dumps({"summary": {**summary, "teacher": {**summary["teacher"], "steps": 9}}, "rows": []}))
    with pytest.raises(SystemExit, match=r"teacher.steps differ"):
        zoo.skip_screened(cfg, [earlier], 50, "condition")
    earlier.write_text("{}")
    with pytest.raises(SystemExit, match="not a screen results JSON"):
        zoo.skip_screened(cfg, [earlier], 50, "condition")
