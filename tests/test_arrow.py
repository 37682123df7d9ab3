"""Arrow routing through PEFT: with one expert it is exactly that adapter; the backbone is restored afterwards;
bad settings and broken experts fail before PEFT touches the model."""

import pytest
import torch

from deltalora.config import LoraSpec
from deltalora.errors import AdapterError, ConfigError
from deltalora.eval import evaluate_task
from deltalora.eval.arrow import Routed, evaluate_routed
from deltalora.lora import LoraWeights, derive_layout, save_adapter
from deltalora.tasks import Task, TaskItem

SPEC = LoraSpec(rank=4, alpha=8, targets="q,v,down")
QUESTIONS = ["colour of sky", "two plus two", "capital of peru", "opposite of up", "name a fruit"]


def _task():
    return Task(
        name="t",
        family="user",
        kind="short",
        description="",
        source="test",
        source_args={},
        train=[],
        condition=[],
        eval=[TaskItem(prompt=q, answer="x") for q in QUESTIONS],
        scorer="exact",
    )


def _weights(b, seed):
    return LoraWeights.random(derive_layout(b.arch, SPEC), std=0.3, seed=seed)


def _lora_modules(model) -> list[str]:
    return [n for n, m in model.named_modules() if hasattr(m, "lora_A")]


def test_arrow_with_one_expert_is_that_adapter_and_leaves_the_backbone_as_it_was(tiny_qwen2, tmp_path):
    b = tiny_qwen2
    w = _weights(b, 3)
    expert = save_adapter(w, tmp_path / "e0")
    kw = dict(max_new_tokens=6, keep_predictions=True)
    plain = evaluate_task(b, _task(), {"base": None, "a": w}, **kw)
    assert plain["arms"]["a"]["predictions"] != plain["arms"]["base"]["predictions"]
    routed = evaluate_routed(b, _task(), Routed((expert,), top_k=1, batch_rows=2), **kw)
    assert routed["arms"]["arrow"]["predictions"] == plain["arms"]["a"]["predictions"]
    assert not _lora_modules(b.model)
    again = evaluate_task(b, _task(), {"base": None}, **kw)
    assert again["arms"]["base"]["predictions"] == plain["arms"]["base"]["predictions"]


def test_arrow_mixes_experts_per_token(tiny_qwen2, tmp_path):
    b = tiny_qwen2
    experts = tuple(save_adapter(_weights(b, s), tmp_path / f"e{s}") for s in range(3))
    kw = dict(max_new_tokens=6, keep_predictions=True)
    one = evaluate_routed(b, _task(), Routed(experts, top_k=1), **kw)["arms"]["arrow"]["predictions"]
    three = evaluate_routed(b, _task(), Routed(experts, top_k=3), **kw)["arms"]["arrow"]["predictions"]
    assert one != three  # routing to three experts is not routing to the best one
    r = Routed(experts, top_k=2)
    assert r.key("s") == Routed(experts, top_k=2).key("s") != Routed(experts, top_k=3).key("s")
    assert not _lora_modules(b.model)


def test_bad_arrow_settings_fail_before_the_model_is_touched(tiny_qwen2, tmp_path):
    b = tiny_qwen2
    good = save_adapter(_weights(b, 1), tmp_path / "good")
    with pytest.raises(ConfigError, match="top_k must be between 1 and the 1 experts"):
        evaluate_routed(b, _task(), Routed((good,), top_k=2))
    broken = save_adapter(_weights(b, 2), tmp_path / "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="broken"):
        evaluate_routed(b, _task(), Routed((good, broken), top_k=1))
    assert not _lora_modules(b.model)
    x = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.isfinite(b.model(input_ids=x).logits).all()
