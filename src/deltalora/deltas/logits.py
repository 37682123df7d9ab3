"""Behaviour at the logit level: teacher-forced next-token log-probabilities on the answer tokens of each task
group's probe items, under K injected adapters (block k of the batch through adapter k), for a KL tether
between a generated adapter and its teacher.

    answers = AnswerLogProbs(backbone, task_probes)            # the items of task_probes.items(group)
    logp = answers(weights, groups)                            # [K, A, vocab] log-probs, A = answer positions
    kl = answer_kl(teacher_logp, logp, answers.mask(groups))  # KL(teacher ‖ generated) per adapter, [K]

The sequences are prompt + answer + EOS, exactly what a zoo teacher was trained on (``format_prompt`` and
``format_target``, the answer cut to ``max_answer_tokens``); the positions scored are those that predict an answer
token (or the EOS), as in the teacher's completion-only loss. Only those positions go through the LM head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..lora import LoraWeights, inject
from ..tasks import format_prompt, format_target
from .forward import stack_left_padded
from .probes import TaskProbes
from .represent import Representation, mean_over_probes, pool_outputs


class AnswerLogProbs:
    """Teacher-forced answer-token log-probs of adapters on their own task group's probe items (module docstring)."""

    def __init__(self, backbone, task_probes: TaskProbes, max_answer_tokens: int = 16):
        self.backbone = backbone
        self.task_probes = task_probes
        self.max_answer_tokens = int(max_answer_tokens)
        self._groups: dict[tuple[str, ...], dict] = {}

    @property
    def n(self) -> int:
        return self.task_probes.spec.n

    def _group(self, group: tuple[str, ...]) -> dict:
        """A group's left-padded sequences and, per row, the positions whose next token is an answer token."""
        if group in self._groups:
            return self._groups[group]
        tok = self.backbone.tokenizer
        eos = tok.eos_token or ""
        rows, answer_lens, prompts = [], [], []
        for task, item in self.task_probes.items(group):
            p = tok(format_prompt(tok, task, item), add_special_tokens=False)["input_ids"]
            a = tok(format_target(task, item) + eos, add_special_tokens=False)["input_ids"][: self.max_answer_tokens]
            rows.append(p + a)
            answer_lens.append(len(a))
            prompts.append(p)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, r in enumerate(rows):
            ids[k, width - len(r) :] = torch.tensor(r)
            mask[k, width - len(r) :] = 1
        dev = self.backbone.device
        enc = {
            "input_ids": ids.to(dev),
            "attention_mask": mask.to(dev),
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(dev),
        }
        # the last len(a) positions before the end predict the answer tokens: positions width-1-len(a) .. width-2
        score = torch.zeros_like(ids, dtype=torch.bool)
        prompt = torch.zeros_like(ids)  # the prompt's tokens: what the group's Δ probes are
        for k, (n_a, p) in enumerate(zip(answer_lens, prompts)):
            score[k, width - 1 - n_a : width - 1] = True
            prompt[k, width - n_a - len(p) : width - n_a] = 1
        self._groups[group] = {
            "enc": enc,
            "score": score,
            "count": int(score.sum()),
            "prompt": prompt.to(dev),
            "prompt_ids": prompts,
        }
        return self._groups[group]

    def prompts_are(self, group, texts: Sequence[str]) -> bool:
        """Whether the group's rows start with exactly ``texts`` as the Δ probe forward tokenises them (the tokenizer's
        default special tokens): then one forward over these rows serves both the KL and the Δ of the group."""
        ids = self.backbone.tokenizer(list(texts))["input_ids"]
        return [list(i) for i in ids] == self._group(self._key(group))["prompt_ids"]

    def positions(self, groups: Sequence) -> int:
        """A: the padded number of answer positions per adapter for a batch of ``groups``."""
        return max(self._group(self._key(g))["count"] for g in groups)

    @staticmethod
    def _key(g) -> tuple[str, ...]:
        return (g,) if isinstance(g, str) else tuple(g)

    def mask(self, groups: Sequence) -> torch.Tensor:
        """[K, A] bool: which of the A answer positions are real for each adapter (the rest is padding)."""
        a = self.positions(groups)
        counts = [self._group(self._key(g))["count"] for g in groups]
        return torch.arange(a)[None, :] < torch.tensor(counts)[:, None]

    def __call__(
        self, weights: LoraWeights | None, groups: Sequence, rep: Representation | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """[K, A, vocab] float32 log-probs at each adapter's answer positions (padding rows 0); ``weights`` ``None``
        scores the base model on each group (K = len(groups)). Differentiable w.r.t. the LoRA tensors.

        With ``rep``, also v of each adapter on its group's *prompts* ([K, dim]: ``rep`` pooled over the prompt
        tokens, averaged over the group's rows) from the same forward — the Δ probe forward's v when the group's
        prompts are its task probes (:meth:`prompts_are`): causal attention keeps the answer out of every prompt
        position, and positions count from each row's first token in both."""
        keys = [self._key(g) for g in groups]
        if weights is not None and weights.num_adapters is None:
            weights = LoraWeights.stack([weights])
        if weights is not None and weights.num_adapters != len(keys):
            raise ValueError(f"one task group per adapter: {len(keys)} groups for {weights.num_adapters} adapters")
        parts = [self._group(k) for k in keys]
        pad = self.backbone.tokenizer.pad_token_id
        enc = stack_left_padded([p["enc"] for p in parts], pad)
        width = enc["input_ids"].shape[1]
        score = torch.cat([F.pad(p["score"], (width - p["score"].shape[1], 0)) for p in parts])
        model = self.backbone.model
        states = rep is not None and rep.layers is not None
        with inject(model, weights.to(self.backbone.device)) if weights is not None else contextlib.nullcontext():
            hidden_out = model.get_decoder()(**enc, use_cache=False, output_hidden_states=states)
        hidden = hidden_out.last_hidden_state
        a = max(p["count"] for p in parts)
        picked = hidden[score.to(hidden.device)]  # [Σ answers, hidden], adapter-major
        logp = F.log_softmax(model.get_output_embeddings()(picked).float(), dim=-1)
        out = logp.new_zeros(len(keys), a, logp.shape[-1])
        start = 0
        for k, p in enumerate(parts):
            out[k, : p["count"]] = logp[start : start + p["count"]]
            start += p["count"]
        if rep is None:
            return out
        prompt = torch.cat([F.pad(p["prompt"], (width - p["prompt"].shape[1], 0)) for p in parts])
        return out, mean_over_probes(pool_outputs(hidden_out, prompt, rep), self.n)


def answer_kl(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per adapter ([K]): Σ_v p_t (log p_t − log p_s), averaged over the real answer positions
    (``mask`` [K, A]) of [K, A, vocab] log-probs."""
    kl = (teacher.exp() * (teacher - student)).sum(-1)  # [K, A]
    m = mask.to(kl.device, kl.dtype)
    return (kl * m).sum(-1) / m.sum(-1).clamp_min(1)


__all__ = ["AnswerLogProbs", "answer_kl"]
