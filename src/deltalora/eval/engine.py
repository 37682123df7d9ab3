"""Batched scoring primitives: choice log-likelihoods and greedy decoding, under K adapters at once.

Each call scores the same prompts under several "arms" — the base model (``None``) and any number
of LoRA adapters — in shared forwards: the batch is laid out arm-major and every row is routed to its
arm's adapter by :func:`deltalora.lora.inject` (row index -1 = base). Prompts are already formatted
(chat template applied) by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..lora import LoraWeights, inject

Arm = LoraWeights | None


def _stack_arms(arms: Sequence[Arm]) -> tuple[LoraWeights | None, list[int]]:
    """One batched LoraWeights for the adapter arms, and each arm's index in it (-1 for base)."""
    adapters = [a for a in arms if a is not None]
    index, k = [], 0
    for a in arms:
        if a is None:
            index.append(-1)
        else:
            index.append(k)
            k += 1
    return (LoraWeights.stack(adapters) if adapters else None), index


class _Routed:
    """Context: inject the stacked adapters with an explicit row → adapter map (or nothing)."""

    def __init__(self, model, stacked: LoraWeights | None, rows: list[int]):
        self.ctx = None
        if stacked is not None and any(r >= 0 for r in rows):
            self.ctx = inject(model, stacked, rows=torch.tensor(rows))

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


@torch.no_grad()
def choice_logprobs(
    backbone,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    arms: Sequence[Arm],
    batch_rows: int = 32,
) -> list[list[list[float]]]:
    """Sum of log p(choice tokens | prompt) for every (arm, prompt, choice): result[arm][item][choice].

    Choices are scored as continuations of the formatted prompt, right-padded so positions are exact.
    """
    tok, model = backbone.tokenizer, backbone.model
    stacked, arm_index = _stack_arms(arms)
    if stacked is not None:
        stacked = stacked.to(backbone.device)
    seqs = []  # (arm, item, choice, ids, n_prompt)
    for i, (prompt, opts) in enumerate(zip(prompts, choices, strict=True)):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        for c, opt in enumerate(opts):
            t = tok(opt, add_special_tokens=False)["input_ids"]
            if not t:
                raise ValueError(f"choice {opt!r} of item {i} tokenises to nothing")
            for a in range(len(arms)):
                seqs.append((a, i, c, p + t, len(p)))
    out = [[[0.0] * len(opts) for opts in choices] for _ in arms]
    pad = tok.pad_token_id
    for start in range(0, len(seqs), batch_rows):
        chunk = seqs[start : start + batch_rows]
        n = max(len(s[3]) for s in chunk)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(chunk):
            ids[r, : len(s[3])] = torch.tensor(s[3])
            mask[r, : len(s[3])] = 1
        ids, mask = ids.to(backbone.device), mask.to(backbone.device)
        with _Routed(model, stacked, [arm_index[s[0]] for s in chunk]):
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        for r, (a, i, c, seq, n_prompt) in enumerate(chunk):
            out[a][i][c] = float(logp[r, n_prompt - 1 : len(seq) - 1].sum())
    return out


@torch.no_grad()
def greedy_generate(
    backbone,
    prompts: Sequence[str],
    arms: Sequence[Arm],
    max_new_tokens: int = 32,
    batch_rows: int = 32,
) -> list[list[str]]:
    """Greedy continuations of every prompt under every arm: result[arm][item] (special tokens dropped)."""
    tok, model = backbone.tokenizer, backbone.model
    stacked, arm_index = _stack_arms(arms)
    if stacked is not None:
        stacked = stacked.to(backbone.device)
    jobs = [(a, i) for a in range(len(arms)) for i in range(len(prompts))]
    out = [[""] * len(prompts) for _ in arms]
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for start in range(0, len(jobs), batch_rows):
            chunk = jobs[start : start + batch_rows]
            enc = tok([prompts[i] for _, i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(backbone.device)
            with _Routed(model, stacked, [arm_index[a] for a, _ in chunk]):
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            for r, (a, i) in enumerate(chunk):
                out[a][i] = tok.decode(new[r], skip_special_tokens=True)
    finally:
        tok.padding_side = side
    return out
