"""Differentiable Δ of generated adapters: LoRA tensors → batched hook injection → v over the probes → Δ.

    probe = DeltaProbe(backbone, probes="generic5", representation="last_token")
    delta = probe(weights)        # weights: batched LoraWeights (may require grad) -> [K, dim] float32

The backbone stays frozen (its parameters never require grad); gradients reach the LoRA tensors and so
whatever produced them. v(B) is computed once, in the same precision as the probe forward (so a bf16
probe forward compares against a bf16 base), and Δ is always float32.
"""

from __future__ import annotations

import contextlib

import torch

from ..deltas import get_probe_set, parse_representation
from ..errors import ConfigError
from ..deltas.represent import encode_probes, mean_over_probes, probe_vectors, repeat_batch
from ..lora import LoraWeights, inject

PROBE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class DeltaProbe:
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
                f"probe dtype {dtype} over a {str(have).removeprefix('torch.')} backbone: autocast cannot widen the weights; "
                f"load the backbone with runtime dtype float32 (probes then run in {dtype}) or set probe_dtype to the backbone's dtype"
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
        k = 1 if weights is None else weights.num_adapters
        ctx = contextlib.nullcontext() if weights is None else inject(self.backbone.model, weights)
        with ctx, self._autocast():
            vectors = probe_vectors(self.backbone.model.model, repeat_batch(self.enc, k), self.rep)
        return mean_over_probes(vectors.float(), len(self.probes))

    def __call__(self, weights: LoraWeights) -> torch.Tensor:
        """Δ of each adapter of ``weights`` ([K, dim] float32), differentiable w.r.t. the LoRA tensors."""
        if weights.num_adapters is None:
            weights = LoraWeights.stack([weights])
        return self._v(weights.to(self.backbone.device)) - self.base


DELTA_LOSSES = ("mse", "cosine", "specific_cosine")


def remove_shared(x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """``x`` with its component along ``shared`` projected out (rows of a [K, dim] batch, or one vector).

    Every fine-tune on answer text moves the last hidden state along one common direction (the training
    teachers' mean Δ); what is left is the task-specific part of the shift. A projection, not a
    subtraction: a zero shift stays zero, so an adapter that does nothing cannot look task-like.
    """
    u = shared / shared.norm().clamp_min(1e-12)
    return x - (x @ u)[..., None] * u


def delta_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str, scale: float = 1.0, shared: torch.Tensor | None = None
) -> torch.Tensor:
    """L_Δ over a [K, dim] batch: ``mse`` = mean ‖Δ_pred − Δ_teacher‖² / ``scale`` (pass the teachers' mean
    ‖Δ‖², so 1.0 means "as far as predicting zero"), ``cosine`` = mean (1 − cos), ``specific_cosine`` =
    mean (1 − cos) after projecting ``shared`` (the training teachers' mean Δ) out of both sides."""
    if kind == "mse":
        return (pred - target).square().sum(-1).mean() / scale
    if kind == "cosine":
        return (1.0 - torch.nn.functional.cosine_similarity(pred, target, dim=-1, eps=1e-8)).mean()
    if kind == "specific_cosine":
        if shared is None:
            raise ValueError("specific_cosine needs shared= (the training teachers' mean Δ)")
        c = shared.to(pred)
        return (1.0 - torch.nn.functional.cosine_similarity(remove_shared(pred, c), remove_shared(target, c), dim=-1, eps=1e-8)).mean()
    raise ValueError(f"unknown delta loss {kind!r}; use one of {', '.join(DELTA_LOSSES)}")


def cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row cosine similarity of two [K, dim] batches (no gradient)."""
    return torch.nn.functional.cosine_similarity(pred.detach().float(), target.detach().float(), dim=-1, eps=1e-8)


__all__ = ["DELTA_LOSSES", "DeltaProbe", "PROBE_DTYPES", "cosine", "delta_loss", "remove_shared"]
