"""The LoRA Δ forward, with and without gradients: K adapters injected block-wise → v over the probes.

:func:`lora_activations` is the one forward both users run: :class:`DeltaExtractor` (no grad, teacher Δ
for the cache) and :class:`DeltaProbe` (differentiable, the Δ loss of generator training).

    probe = DeltaProbe(backbone, probes="generic5", representation="last_token")
    delta = probe(weights)        # weights: batched LoraWeights (may require grad) -> [K, dim] float32

The backbone stays frozen (its parameters never require grad); gradients reach the LoRA tensors and so
whatever produced them. v(B) is computed once, in the same precision as the probe forward (so a bf16
probe forward compares against a bf16 base), and Δ is always float32.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError
from ..lora import LoraWeights, inject
from .probes import get_probe_set
from .represent import (
    Representation,
    encode_probes,
    mean_over_probes,
    parse_representation,
    probe_vectors,
    repeat_batch,
)

PROBE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def lora_activations(
    model: torch.nn.Module, enc: dict, rep: Representation, weights: LoraWeights | None, num_probes: int
) -> torch.Tensor:
    """v of each adapter of a batched ``weights`` ([K, dim] float32) over the encoded probes ``enc``, all K in
    one forward of the causal LM ``model`` (block k of the K·P rows through adapter k); ``None``: v(B), [1, dim]."""
    if weights is None:
        return mean_over_probes(probe_vectors(model.model, enc, rep), num_probes)
    with inject(model, weights):
        vectors = probe_vectors(model.model, repeat_batch(enc, weights.num_adapters), rep)
    return mean_over_probes(vectors, num_probes)


class DeltaProbe:
    """Differentiable Δ of generated adapters against a frozen backbone (see the module docstring)."""

    def __init__(self, backbone, probes: str = "generic5", representation: str = "last_token", dtype: str = "float32"):
        if dtype not in PROBE_DTYPES:
            raise ValueError(f"probe dtype {dtype!r} is not one of {sorted(PROBE_DTYPES)}")
        self.backbone = backbone
        self.probes = get_probe_set(probes)
        self.rep = parse_representation(representation)
        self.dtype = PROBE_DTYPES[dtype]
        have = backbone.runtime.torch_dtype
        if self.dtype != have and (self.dtype == torch.float32 or have != torch.float32):
            # autocast only narrows: a float32 probe forward over bf16/fp16 weights would silently run narrow
            raise ConfigError(
                f"probe dtype {dtype} over a {str(have).removeprefix('torch.')} backbone: autocast cannot widen the "
                f"weights; load the backbone with runtime dtype float32 (probes then run in {dtype}) or set "
                "probe_dtype to the backbone's dtype"
            )
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        self.enc = encode_probes(backbone.tokenizer, self.probes.texts, device=backbone.device)
        with torch.no_grad():
            self.base = self._v(None)[0].detach()

    def _autocast(self):
        if self.dtype == self.backbone.runtime.torch_dtype:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.backbone.device.type, dtype=self.dtype)

    def _v(self, weights: LoraWeights | None) -> torch.Tensor:
        with self._autocast():
            return lora_activations(self.backbone.model, self.enc, self.rep, weights, len(self.probes))

    def __call__(self, weights: LoraWeights) -> torch.Tensor:
        """Δ of each adapter of ``weights`` ([K, dim] float32), differentiable w.r.t. the LoRA tensors."""
        if weights.num_adapters is None:
            weights = LoraWeights.stack([weights])
        return self._v(weights.to(self.backbone.device)) - self.base


__all__ = ["PROBE_DTYPES", "DeltaProbe", "lora_activations"]
