"""Shared test helpers: stock-PEFT references for deltalora's adapters."""

from __future__ import annotations

import copy

import torch
from peft import get_peft_model, set_peft_model_state_dict

from deltalora.lora import LoraWeights
from deltalora.lora.adapter_io import peft_lora_config


def peft_reference(model, weights: LoraWeights):
    """A stock PEFT model (on a copy of ``model``) holding the same single adapter as ``weights``."""
    peft_model = get_peft_model(copy.deepcopy(model), peft_lora_config(weights.layout.spec))
    state = {}
    for s in weights.layout.slots:
        state[s.peft_key_a] = weights.A[s.key].detach().clone()
        state[s.peft_key_b] = weights.B[s.key].detach().clone()
    result = set_peft_model_state_dict(peft_model, state)
    assert not result.unexpected_keys, result.unexpected_keys
    missing = [k for k in result.missing_keys if "lora_" in k]
    assert not missing, missing
    peft_model.eval()
    return peft_model


def encode(tokenizer, texts, padding_side="left"):
    tokenizer.padding_side = padding_side
    return tokenizer(texts, return_tensors="pt", padding=True)
