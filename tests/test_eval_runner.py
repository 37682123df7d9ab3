import json

import pytest
import torch
from typer.testing import CliRunner

from deltalora.cli import app
from deltalora.config import LoraSpec
from deltalora.eval import evaluate_task, load_arms
from deltalora.lora import LoraWeights, derive_layout, save_adapter
from deltalora.tasks import Task, TaskError, TaskItem, format_prompt, mc_item

from .helpers import peft_reference

QUESTIONS = ["colour of sky", "two plus two", "capital of peru", "opposite of up"]


def _task(kind, items):
    return Task(
        name="t",
        family="user",
        kind=kind,
        description="",
        source="test",
        source_args={},
        train=[],
        condition=[],
        eval=items,
        scorer="mc" if kind == "mc" else "exact",
    )


def _greedy(model, tok, prompt, n=5):
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        g = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(g[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_short_answer_accuracy_is_exact_on_a_known_case(tiny_qwen2):
    """Gold answers are the models' own greedy outputs (computed independently) for 3 of 4 items."""
    b = tiny_qwen2
    w = LoraWeights.random(derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,v,down")), std=0.2, seed=5)
    ref = peft_reference(b.model, w)
    probe = _task("short", [TaskItem(prompt=q, answer="x") for q in QUESTIONS])
    prompts = [format_prompt(b.tokenizer, probe, it) for it in probe.eval]
    base_out = [_greedy(b.model, b.tokenizer, p) for p in prompts]
    ada_out = [_greedy(ref, b.tokenizer, p) for p in prompts]
    assert base_out != ada_out
    items = [TaskItem(prompt=q, answer=base_out[i] if i < 3 else "#never#") for i, q in enumerate(QUESTIONS)]
    res = evaluate_task(b, _task("short", items), {"base": None, "a": w}, max_new_tokens=5, batch_rows=3)
    assert res["arms"]["base"]["accuracy"] == 0.75 and res["arms"]["base"]["n"] == 4
    expected = sum(ada_out[i] == base_out[i] for i in range(3)) / 4
    assert res["arms"]["a"]["accuracy"] == expected
    assert res["arms"]["base"]["stderr"] == pytest.approx(0.25)  # scores 1,1,1,0: sample var 0.25, / sqrt(4)
    assert res["arms"]["base"]["scores"] == [1.0, 1.0, 1.0, 0.0]  # per item, in item order
    assert res["arms"]["a"]["scores"] == [float(ada_out[i] == base_out[i]) for i in range(3)] + [0.0]


def test_mc_accuracy_follows_loglikelihood(tiny_qwen2):
    b = tiny_qwen2
    choices = ["red", "blue", "green"]
    probe = _task("mc", [mc_item(q, choices, 0) for q in QUESTIONS])
    # find the base model's preferred choice per item, then make it gold for items 0 and 1 only
    from deltalora.eval import choice_logprobs

    prompts = [format_prompt(b.tokenizer, probe, it) for it in probe.eval]
    lp = choice_logprobs(b, prompts, [choices] * 4, [None])[0]
    best = [max(range(3), key=row.__getitem__) for row in lp]
    items = [mc_item(q, choices, best[i] if i < 2 else (best[i] + 1) % 3) for i, q in enumerate(QUESTIONS)]
    res = evaluate_task(b, _task("mc", items), {"base": None}, keep_predictions=True)
    assert res["arms"]["base"]["accuracy"] == 0.5
    assert res["arms"]["base"]["stderr"] == pytest.approx((0.25 * 4 / 3 / 4) ** 0.5)
    assert res["arms"]["base"]["predictions"] == [choices[k] for k in best]
    assert res["arms"]["base"]["scores"] == [1.0, 1.0, 0.0, 0.0]


def test_eval_cli_on_data_file_with_adapter(tiny_qwen2, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": q, "choices": ["yes", "no"], "answer": "yes"}) + "\n" for q in QUESTIONS)
    )
    w = LoraWeights.random(derive_layout(tiny_qwen2.arch, LoraSpec(rank=4, targets="q,v")), std=0.1)
    save_adapter(w, tmp_path / "ad")
    r = CliRunner().invoke(
        app, ["eval", "--backbone", "tiny-qwen2", "--data", str(data), "--adapter", str(tmp_path / "ad"), "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out["arms"]) == {"base", str(tmp_path / "ad")} and all(a["n"] == 4 for a in out["arms"].values())


def test_eval_cli_errors(tmp_path):
    r = CliRunner().invoke(app, ["eval", "--backbone", "tiny-qwen2"])
    assert r.exit_code == 2 and "exactly one of --task NAME or --data FILE" in r.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = CliRunner().invoke(app, ["eval", "--backbone", "tiny-qwen2", "--data", str(empty)])
    assert r.exit_code == 2 and str(empty) in r.output


def test_code_tasks_are_refused_clearly(tiny_qwen2):
    with pytest.raises(TaskError, match="execution scorer"):
        evaluate_task(tiny_qwen2, _task("code", [TaskItem(prompt="def f():", answer="pass")]), {"base": None})


def test_arms_with_different_layouts_are_refused(tiny_qwen2, tmp_path):
    save_adapter(LoraWeights.random(derive_layout(tiny_qwen2.arch, LoraSpec(rank=4, targets="q,v"))), tmp_path / "a")
    save_adapter(LoraWeights.random(derive_layout(tiny_qwen2.arch, LoraSpec(rank=8, targets="q,v"))), tmp_path / "b")
    with pytest.raises(TaskError, match="different layouts"):
        load_arms(tiny_qwen2, [tmp_path / "a", tmp_path / "b"])


def test_bf16_evaluation_runs_under_autocast_and_leaves_the_weights_fp32(tiny_qwen2):
    """precision=bfloat16 scores with bf16 linears (cast once for the call) and says so; the default stays float32,
    and afterwards the backbone holds exactly the fp32 tensors it had."""
    b = tiny_qwen2
    before = {k: v.clone() for k, v in b.model.state_dict().items()}
    w = LoraWeights.random(derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,v,down")), std=0.2, seed=5)
    short = _task("short", [TaskItem(prompt=q, answer="x") for q in QUESTIONS])
    mc = _task("mc", [mc_item(q, ["yes", "no", "maybe"], i % 3) for i, q in enumerate(QUESTIONS)])
    seen = []
    hook = b.model.lm_head.register_forward_hook(lambda m, i, o: seen.append((m.weight.dtype, o.dtype)))
    try:
        for task in (short, mc):
            seen.clear()
            fp32 = evaluate_task(b, task, {"base": None, "a": w}, keep_predictions=True)
            assert fp32["precision"] == "float32" and {d for d in seen} == {(torch.float32, torch.float32)}
            seen.clear()
            bf16 = evaluate_task(b, task, {"base": None, "a": w}, keep_predictions=True, precision="bf16")
            assert bf16["precision"] == "bfloat16" and {d for d in seen} == {(torch.bfloat16, torch.bfloat16)}
            assert set(bf16["arms"]) == {"base", "a"} and all(r["n"] == 4 for r in bf16["arms"].values())
    finally:
        hook.remove()
    after = b.model.state_dict()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(ValueError, match="precision"):
        evaluate_task(b, short, {"base": None}, precision="fp8")
