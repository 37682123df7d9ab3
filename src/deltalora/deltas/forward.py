"""The LoRA Δ forward, with and without gradients: K adapters injected block-wise → v over the probes.

:func:`lora_activations` is the one forward both users run: :class:`DeltaExtractor` (no grad, teacher Δ
for the cache) and :class:`DeltaProbe` (differentiable, the Δ loss of generator training).

    probe = DeltaProbe(backbone, probes="generic5", representation="last_token")
    delta = probe(weights)        # weights: batched LoraWeights (may require grad) -> [K, dim] float32

The backbone stays frozen (its parameters never require grad); gradients reach the LoRA tensors and so
whatever produced them. v(B) is computed once, in the same precision as the probe forward (so a bf16
probe forward compares against a bf16 base), and Δ is always float32.

With task probes (:class:`~deltalora.deltas.probes.TaskProbes`) every adapter is probed on its own task's
prompts: ``probe(weights, groups)`` names each adapter's tasks, block k of the batch holds group k's P probes
(re-padded to one length), and each Δ is taken against v(B) on the same probes (computed once per group).

    probe = DeltaProbe(backbone, probes=task_probes, representation="last_token")
    delta = probe(weights, [("rg_gcd",), ("bb_plural",)])
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError
from ..lora import LoraWeights, inject
from .probes import ProbeSet, TaskProbes, get_probe_set
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
    model: torch.nn.Module,
    enc: dict,
    rep: Representation,
    weights: LoraWeights | None,
    num_probes: int,
    per_adapter: bool = False,
) -> torch.Tensor:
    """v of each adapter of a batched ``weights`` ([K, dim] float32) over the encoded probes ``enc``, all K in
    one forward of the causal LM ``model`` (block k of the K·P rows through adapter k); ``None``: v(B), [1, dim].
    ``enc`` holds the P probes every adapter shares, or with ``per_adapter`` already the K blocks (each adapter's
    own probes)."""
    if weights is None:
        return mean_over_probes(probe_vectors(model.model, enc, rep), num_probes)
    with inject(model, weights):
        vectors = probe_vectors(model.model, enc if per_adapter else repeat_batch(enc, weights.num_adapters), rep)
    return mean_over_probes(vectors, num_probes)


def stack_left_padded(encs: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded encodings of possibly different lengths, stacked row-wise and re-padded on the left to one length
    (padding: ``pad_id``, mask 0, position 0), so every row keeps its tokens and positions."""
    width = max(e["input_ids"].shape[1] for e in encs)
    out: dict[str, list[torch.Tensor]] = {"input_ids": [], "attention_mask": [], "position_ids": []}
    for e in encs:
        extra = width - e["input_ids"].shape[1]
        for name, fill in (("input_ids", pad_id), ("attention_mask", 0), ("position_ids", 0)):
            t = e[name]
            if extra:
                t = torch.cat([t.new_full((t.shape[0], extra), fill), t], dim=1)
            out[name].append(t)
    return {k: torch.cat(v) for k, v in out.items()}


class DeltaProbe:
    """Differentiable Δ of generated adapters against a frozen backbone (see the module docstring)."""

    def __init__(
        self,
        backbone,
        probes: str | ProbeSet | TaskProbes = "generic5",
        representation: str = "last_token",
        dtype: str = "float32",
    ):
        if dtype not in PROBE_DTYPES:
            raise ValueError(f"probe dtype {dtype!r} is not one of {sorted(PROBE_DTYPES)}")
        self.backbone = backbone
        self.probes = probes if isinstance(probes, (ProbeSet, TaskProbes)) else get_probe_set(probes)
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
        self.task_probes = probes if isinstance(probes, TaskProbes) else None
        self._groups: dict[tuple[str, ...], tuple[dict, torch.Tensor]] = {}  # group -> (encoded probes, v(B))
        if self.task_probes is None:
            self.enc = encode_probes(backbone.tokenizer, self.probes.texts, device=backbone.device)
            with torch.no_grad():
                self.base = self._v(None)[0].detach()

    def _autocast(self):
        if self.dtype == self.backbone.runtime.torch_dtype:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.backbone.device.type, dtype=self.dtype)

    def _v(
        self, weights: LoraWeights | None, enc: dict | None = None, num_probes: int | None = None, per_adapter=False
    ) -> torch.Tensor:
        enc = self.enc if enc is None else enc
        n = num_probes or len(self.probes)
        with self._autocast():
            return lora_activations(self.backbone.model, enc, self.rep, weights, n, per_adapter)

    def _group(self, group: tuple[str, ...]) -> tuple[dict, torch.Tensor]:
        """A task group's encoded probes and v(B) on them (computed once)."""
        if group not in self._groups:
            ps = self.task_probes.probe_set(group)
            enc = encode_probes(self.backbone.tokenizer, ps.texts, device=self.backbone.device)
            with torch.no_grad():
                base = self._v(None, enc, len(ps))[0].detach()
            self._groups[group] = (enc, base)
        return self._groups[group]

    def __call__(self, weights: LoraWeights, groups=None) -> torch.Tensor:
        """Δ of each adapter of ``weights`` ([K, dim] float32), differentiable w.r.t. the LoRA tensors. With task
        probes, ``groups`` names each adapter's tasks (a task name or a tuple of a mixed teacher's tasks)."""
        if weights.num_adapters is None:
            weights = LoraWeights.stack([weights])
        weights = weights.to(self.backbone.device)
        if self.task_probes is None:
            return self._v(weights) - self.base
        if groups is None or len(groups) != weights.num_adapters:
            raise ValueError(f"task probes need one task group per adapter, got {groups!r} for {weights.num_adapters}")
        parts = [self._group(_group_key(g)) for g in groups]
        enc = stack_left_padded([e for e, _ in parts], self.backbone.tokenizer.pad_token_id)
        v = self._v(weights, enc, self.task_probes.spec.n, per_adapter=True)
        return v - torch.stack([b for _, b in parts])

    def shares_forward_with(self, answers) -> bool:
        """Whether :class:`~deltalora.deltas.logits.AnswerLogProbs` ``answers`` can give this probe's v from its own
        forward (``answers(weights, groups, rep=self.rep)``): task probes of the same spec, and a probe forward in
        the backbone's own dtype (no autocast, as the answers' forward). Per group,
        :meth:`~deltalora.deltas.logits.AnswerLogProbs.prompts_are` still checks that the prompts are the probes."""
        tp, other = self.task_probes, getattr(answers, "task_probes", None)
        return (
            tp is not None
            and other is not None
            and tp.spec == other.spec
            and self.dtype == self.backbone.runtime.torch_dtype
            and answers.backbone is self.backbone
        )

    def probe_texts(self, group) -> tuple[str, ...]:
        """The task probes of one group (a task name or a mixed teacher's tasks)."""
        return self.task_probes.probe_set(_group_key(group)).texts

    def delta_of(self, v: torch.Tensor, groups) -> torch.Tensor:
        """Δ from v computed elsewhere on each group's task probes ([K, dim]): v − v(B) of the same probes."""
        return v - torch.stack([self._group(_group_key(g))[1] for g in groups])


def _group_key(g) -> tuple[str, ...]:
    return (g,) if isinstance(g, str) else tuple(g)


__all__ = ["PROBE_DTYPES", "DeltaProbe", "lora_activations", "stack_left_padded"]
