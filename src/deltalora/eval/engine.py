"""Batched scoring primitives: choice log-likelihoods and greedy decoding, under K adapters at once.

Each call scores the same prompts under several "arms" — the base model (``None``) and any number
of LoRA adapters — in shared forwards: the batch is laid out arm-major and every row is routed to its
arm's adapter by :func:`deltalora.lora.inject` (row index -1 = base). Prompts are already formatted
(chat template applied) by the caller.
"""

from __future__ import annotations

import copy
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


def _row_order(n_arms: int, prompt_lens: Sequence[int]) -> list[tuple[int, int]]:
    """(arm, item) rows in batch order: arm-major, then by prompt length.

    Arm-major, a batch holds one or two adapters, which the injection runs as dense matmuls, and an arm's rows
    tend to stop decoding together. Length-sorted, a batch pads little: prompt lengths vary up to 2x within a
    task (bb_timedial), and unsorted ~25 % of the prompt tokens were padding across the default suite.
    """
    by_len = sorted(range(len(prompt_lens)), key=prompt_lens.__getitem__)
    return [(a, i) for a in range(n_arms) for i in by_len]


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

    Each (arm, prompt) runs once; its KV cache is shared by all of the item's choices, which run as
    short continuations. Prompts are left-padded with explicit position ids, so every token sits at
    the position it has in the unpadded ``prompt + choice`` sequence. The choice's first token is
    scored from the prompt's last logits; a choice of one token needs no continuation forward at all
    (binary yes/no tasks cost one prompt forward per item and arm). This is what makes multiple
    choice cheap: the old layout ran the whole prompt once per choice.
    """
    tok, model = backbone.tokenizer, backbone.model
    stacked, arm_index = _stack_arms(arms)
    if stacked is not None:
        stacked = stacked.to(backbone.device)
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    choice_ids = []
    for i, opts in enumerate(choices):
        row = [tok(opt, add_special_tokens=False)["input_ids"] for opt in opts]
        for opt, t in zip(opts, row):
            if not t:
                raise ValueError(f"choice {opt!r} of item {i} tokenises to nothing")
        choice_ids.append(row)
    if len(prompt_ids) != len(choice_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(choices)} choice lists")
    out = [[[0.0] * len(opts) for opts in choices] for _ in arms]
    pad, dev = tok.pad_token_id, backbone.device
    pairs = _row_order(len(arms), [len(p) for p in prompt_ids])
    for start in range(0, len(pairs), batch_rows):
        chunk = pairs[start : start + batch_rows]
        lens = [len(prompt_ids[i]) for _, i in chunk]
        n = max(lens)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (_, i) in enumerate(chunk):
            ids[r, n - lens[r] :] = torch.tensor(prompt_ids[i])
            mask[r, n - lens[r] :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
        with _Routed(model, stacked, [arm_index[a] for a, _ in chunk]):
            # only the last position's logits: the full [rows, tokens, vocab] tensor is GBs for long prompts
            res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        first = F.log_softmax(res.logits[:, -1].float(), dim=-1)  # p(first choice token | prompt)
        cache = res.past_key_values
        conts = [(r, c) for r, (_, i) in enumerate(chunk) for c in range(len(choice_ids[i]))]
        for s in range(0, len(conts), batch_rows):
            sub = conts[s : s + batch_rows]
            toks = [choice_ids[chunk[r][1]][c] for r, c in sub]
            rows = torch.tensor([r for r, _ in sub], device=dev)
            score = first[rows].gather(-1, torch.tensor([[t[0]] for t in toks], device=dev))[:, 0]
            m = max(len(t) for t in toks) - 1  # tokens after the first, scored by a continuation forward
            if m > 0:
                cids = torch.full((len(sub), m + 1), pad, dtype=torch.long)
                cmask = torch.zeros_like(cids)
                for k, t in enumerate(toks):
                    cids[k, : len(t)] = torch.tensor(t)
                    cmask[k, : len(t)] = 1
                cids, cmask = cids.to(dev), cmask.to(dev)
                sub_cache = copy.deepcopy(cache)
                sub_cache.batch_select_indices(rows)
                cpos = torch.tensor([lens[r] for r, _ in sub], device=dev)[:, None] + torch.arange(m, device=dev)
                with _Routed(model, stacked, [arm_index[chunk[r][0]] for r, _ in sub]):
                    logits = model(
                        input_ids=cids[:, :m],
                        attention_mask=torch.cat([mask[rows], cmask[:, :m]], dim=1),
                        position_ids=cpos,
                        past_key_values=sub_cache,
                        use_cache=False,
                    ).logits.float()
                rest = F.log_softmax(logits, dim=-1).gather(-1, cids[:, 1:, None])[..., 0]
                score = score + (rest * cmask[:, 1:]).sum(-1)
            for k, (r, c) in enumerate(sub):
                a, i = chunk[r]
                out[a][i][c] = float(score[k])
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
    jobs = _row_order(len(arms), [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts])
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
