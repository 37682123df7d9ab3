"""The optional lm-evaluation-harness backend: same log-likelihoods as the native evaluator, adapters applied."""

import json

import pytest

from deltalora.config import LoraSpec
from deltalora.errors import ConfigError
from deltalora.eval import choice_logprobs
from deltalora.lora import LoraWeights, derive_layout

pytest.importorskip("lm_eval")  # the [lm-eval] extra; CI installs it through the [test] extra

from deltalora.eval.lm_eval_backend import evaluate_lm_eval  # noqa: E402

ITEMS = [
    {"question": "Q: colour of the sky?\nA:", "choices": [" blue", " green", " red"], "answer": 0},
    {"question": "Q: 2 + 2 =", "choices": [" 4", " five"], "answer": 0},
    {"question": "Q: opposite of hot?\nA:", "choices": [" warm", " cold"], "answer": 1},
    {"question": "Pick a fruit:", "choices": [" stone", " apple", " chair"], "answer": 1},
]


def _task_dir(tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in ITEMS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(
        "task: deltalora_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: question\n"
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n"
    )
    return tasks


def test_lm_eval_backend_matches_the_native_scores_for_base_and_adapter(tiny_qwen2, tmp_path):
    b = tiny_qwen2
    w = LoraWeights.random(derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,v,down")), std=0.3, seed=4)
    tasks = _task_dir(tmp_path)
    res = evaluate_lm_eval(
        b, {"base": None, "adapter": w}, ["deltalora_tiny_mc"], include_path=tasks, batch_size=2, keep_samples=True
    )
    native = choice_logprobs(b, [it["question"] for it in ITEMS], [it["choices"] for it in ITEMS], [None, w])
    assert res["n"]["deltalora_tiny_mc"] == len(ITEMS)
    for a, arm in enumerate(("base", "adapter")):
        lls = [[float(resp[0][0]) for resp in item] for item in res["samples"][arm]["deltalora_tiny_mc"]]
        assert [len(x) for x in lls] == [len(it["choices"]) for it in ITEMS]
        for got, want in zip(lls, native[a]):
            assert got == pytest.approx(want, abs=1e-4)
        picks = [max(range(len(x)), key=x.__getitem__) for x in native[a]]
        acc = sum(p == it["answer"] for p, it in zip(picks, ITEMS)) / len(ITEMS)
        assert res["arms"][arm]["deltalora_tiny_mc"]["acc"] == pytest.approx(acc)
    assert res["samples"]["base"] != res["samples"]["adapter"]  # the adapter was applied ...
    again = evaluate_lm_eval(b, {"base": None}, ["deltalora_tiny_mc"], include_path=tasks, keep_samples=True)
    assert again["samples"]["base"] == res["samples"]["base"]  # ... and removed afterwards


def test_lm_eval_backend_names_what_is_wrong(tiny_qwen2, tmp_path):
    with pytest.raises(ConfigError, match="unknown lm-eval task.*no_such_task"):
        evaluate_lm_eval(tiny_qwen2, {"base": None}, ["no_such_task"], include_path=_task_dir(tmp_path))
    with pytest.raises(ConfigError, match="must be a directory"):
        evaluate_lm_eval(tiny_qwen2, {"base": None}, ["deltalora_tiny_mc"], include_path=tmp_path / "missing")
    with pytest.raises(ConfigError, match="no lm-eval task"):
        evaluate_lm_eval(tiny_qwen2, {"base": None}, [])


def test_eval_cli_lm_eval_backend_with_an_adapter_dir(tiny_qwen2, tmp_path):
    from typer.testing import CliRunner

    from deltalora.cli import app
    from deltalora.lora import save_adapter

    w = LoraWeights.random(derive_layout(tiny_qwen2.arch, LoraSpec(rank=4, targets="q,v")), std=0.3, seed=2)
    save_adapter(w, tmp_path / "ad")
    tasks = _task_dir(tmp_path)
    args = [
        "eval",
        "--backend",
        "lm-eval",
        "--backbone",
        "tiny-qwen2",
        "--task",
        "deltalora_tiny_mc",
        "--lm-eval-include",
        str(tasks),
        "--adapter",
        str(tmp_path / "ad"),
        "--limit",
        "3",
        "--json",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{") :])
    assert set(out["arms"]) == {"base", str(tmp_path / "ad")} and out["n"] == {"deltalora_tiny_mc": 3}
    assert all(0.0 <= a["deltalora_tiny_mc"]["acc"] <= 1.0 for a in out["arms"].values())
    r = CliRunner().invoke(
        app, ["eval", "--backend", "lm-eval", "--backbone", "tiny-qwen2", "--data", str(tasks / "x.jsonl")]
    )
    assert r.exit_code == 2 and "pass --task NAME" in r.output
    r = CliRunner().invoke(app, ["eval", "--backend", "harness", "--backbone", "tiny-qwen2", "--task", "x"])
    assert r.exit_code == 2 and "use native or lm-eval" in r.output
