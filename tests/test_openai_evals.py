"""The OpenAI-Evals task source (``evals`` wheel registry data): one wheel read, prompts from the chat messages, ideal
answers as targets, conflicting duplicates left out, the length cap and the errors. Offline: a fake wheel stands in."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from deltalora.tasks import TaskError, TaskSpec, build_suite, build_task, fetch_openai_evals
from deltalora.tasks.sources import openai_evals
from tests.helpers import serve_release

SYSTEM = "Does the regular expression match the whole string? Answer Yes. or No."
REGEX = [
    {
        "input": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"regex: a{{{i}}} string: {'a' * i}"},
        ],
        "ideal": "Yes.",
    }
    for i in range(12)
] + [
    {
        "input": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "regex: b string: c"}],
        "ideal": "No.",
    },
    {
        "input": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "regex: b string: c"}],
        "ideal": "Yes.",
    },
    {"input": [{"role": "user", "content": "no ideal"}]},
]
HANDS = [{"input": f"Rank the hand {i}", "ideal": [f"pair {i}", f"one pair {i}"]} for i in range(10)]


def _fake_wheel(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / openai_evals.EVALS_WHEEL
    with zipfile.ZipFile(path, "w") as zf:
        for rel, rows in {"regex-match/samples.jsonl": REGEX, "poker/full_samples.jsonl": HANDS}.items():
            zf.writestr(f"{openai_evals.MEMBER_ROOT}/{rel}", "\n".join(json.dumps(r) for r in rows) + "\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_wheel(tmp_path, deltalora_home, monkeypatch):
    wheel, sha = _fake_wheel(tmp_path)
    return sha, serve_release(monkeypatch, openai_evals, "EVALS_SHA256", wheel)


def spec(name: str, path: str, n_train: int = 4, **args) -> TaskSpec:
    return TaskSpec(
        name=name, family="code", kind="short", source="openai_evals", args={"samples": path, **args},
        n_train=n_train, n_condition=2, n_eval=4,
    )  # fmt: skip


def test_prompts_join_the_messages_and_conflicting_duplicates_are_left_out(fake_wheel):
    with pytest.warns(UserWarning, match="skipped 2 Evals samples"):  # the ideal-less sample and the conflicting pair
        task = build_task(spec("regex", "regex-match/samples.jsonl"))
    items = task.train + task.condition + task.eval
    assert len(items) == 10 and all(it.answer == "Yes." for it in items)
    assert all(it.prompt.startswith(SYSTEM + "\n\nregex: a{") for it in items)
    assert task.score(items[0], "yes") == 1.0 and task.score(items[0], "No.") == 0.0


def test_a_list_of_ideals_is_every_accepted_answer_and_a_string_input_is_the_prompt(fake_wheel):
    task = build_task(spec("hands", "poker/full_samples.jsonl"))
    it = task.eval[0]
    assert it.prompt.startswith("Rank the hand ") and it.meta["targets"][1].startswith("one pair")
    assert task.score(it, it.meta["targets"][1]) == 1.0


def test_one_wheel_read_for_a_suite_and_the_cache(fake_wheel, deltalora_home):
    sha, calls = fake_wheel
    build_suite([spec("r", "regex-match/samples.jsonl"), spec("h", "poker/full_samples.jsonl")])
    assert calls == [openai_evals.EVALS_WHEEL]
    got = fetch_openai_evals(["poker/full_samples.jsonl"])["poker/full_samples.jsonl"]
    assert got == deltalora_home / "tasks" / "openai_evals" / sha[:16] / "poker" / "full_samples.jsonl"
    assert calls == [openai_evals.EVALS_WHEEL]


def test_the_length_cap(fake_wheel):
    cap = len(SYSTEM) + 2 + len("regex: a{5} string: aaaaa") + len("Yes.")
    with pytest.warns(UserWarning, match=f"longer than {cap} characters"):
        task = build_task(spec("regex_capped", "regex-match/samples.jsonl", max_chars=cap, n_train=1))
    assert all(len(it.prompt) + len(it.answer) <= cap for it in task.train + task.condition + task.eval)


def test_bad_and_missing_paths_are_one_line_errors(fake_wheel):
    with pytest.raises(TaskError, match="bad Evals samples path"):
        fetch_openai_evals(["../../etc/passwd.jsonl"])
    with pytest.raises(TaskError, match=r"has no \['evals/registry/data/nope/samples.jsonl'\]") as err:
        fetch_openai_evals(["regex-match/samples.jsonl", "nope/samples.jsonl"])
    assert "\n" not in str(err.value)
