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
from transformers import DynamicCache

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


# Below this many shared tokens a separate prefix forward saves less than its own call costs.
MIN_SHARED_PREFIX = 8


def _shared_prefix(prompt_ids: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt shares (the chat template's system turn, a task's instructions),
    leaving each prompt at least one token of its own; 0 when that is under ``MIN_SHARED_PREFIX``.

    The prefix runs once per arm of a batch instead of once per row: on ten tasks of the default suite's eval
    split it is 13–69 % of a prompt (e.g. 53 of 76 tokens for word-sequence reversal), and prompt forwards are
    most of an evaluation's cost on CPU.
    """
    if not prompt_ids:
        return 0
    first, limit = prompt_ids[0], min(len(p) for p in prompt_ids) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompt_ids):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


class _PrefixCache:
    """The KV cache of the prompt prefix all items share, per arm, computed once per call and reused by every batch.

    The first batch that holds an arm runs the prefix for it (one row per new arm); later batches copy the rows."""

    def __init__(self, model, prefix: Sequence[int], stacked, arm_index: Sequence[int], device):
        self.model, self.prefix, self.stacked, self.arm_index, self.device = (
            model,
            list(prefix),
            stacked,
            arm_index,
            device,
        )
        self.kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # arm -> per layer (keys, values), one row

    def rows(self, chunk_arms: Sequence[int]):
        """A cache for a batch whose row r belongs to arm ``chunk_arms[r]``."""
        new = [a for a in dict.fromkeys(chunk_arms) if a not in self.kv]
        if new:
            ids = torch.tensor([self.prefix] * len(new), device=self.device)
            with _Routed(self.model, self.stacked, [self.arm_index[a] for a in new]):
                cache = self.model.get_decoder()(input_ids=ids, use_cache=True).past_key_values  # no LM head needed
            for j, a in enumerate(new):
                self.kv[a] = [(layer.keys[j : j + 1], layer.values[j : j + 1]) for layer in cache.layers]
        out = DynamicCache()
        for i in range(len(self.kv[chunk_arms[0]])):
            out.update(
                torch.cat([self.kv[a][i][0] for a in chunk_arms]), torch.cat([self.kv[a][i][1] for a in chunk_arms]), i
            )
        return out


def _last_logits(model, **inputs) -> tuple[torch.Tensor, object]:
    """Logits of each row's last position ([N, vocab]) and the KV cache, from the decoder plus the LM head.

    Not ``model(..., logits_to_keep=1)``: that hands the head a strided [N, 1, hidden] view, for which torch's
    linear falls back to a batched matmul that streams the head's weight once per row (0.55 s instead of 0.08 s
    for 32 rows on qwen2.5-0.5b's 151,936-token head, measured on 2 cores)."""
    out = model.get_decoder()(**inputs, use_cache=True)
    return model.get_output_embeddings()(out.last_hidden_state[:, -1].contiguous()), out.past_key_values


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


def _left_padded(
    rows: Sequence[Sequence[int]], pad: int, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, their mask, and position ids that start at ``offset`` (the shared prefix's length) on
    every row's first real token."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for k, r in enumerate(rows):
        ids[k, n - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[k, n - len(r) :] = 1
    return ids, mask, offset + (mask.cumsum(-1) - 1).clamp(min=0)


class _Plan:
    """What every scorer derives from (prompts, arms) first: the stacked adapters, each prompt's ids, the rows in
    batch order (arm-major, length-sorted), the shared prefix length and the per-arm cache of that prefix."""

    def __init__(self, backbone, prompts: Sequence[str], arms: Sequence[Arm]):
        tok, model = backbone.tokenizer, backbone.model
        self.stacked, self.arm_index = _stack_arms(arms)
        if self.stacked is not None:
            self.stacked = self.stacked.to(backbone.device)
        self.prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        self.rows = _row_order(len(arms), [len(p) for p in self.prompt_ids])
        self.shared = _shared_prefix(self.prompt_ids)
        self.prefix = (
            _PrefixCache(model, self.prompt_ids[0][: self.shared], self.stacked, self.arm_index, backbone.device)
            if self.shared
            else None
        )

    def prefill(self, backbone, chunk: Sequence[tuple[int, int]]):
        """Run a batch of (arm, item) rows' prompts: the last position's logits, the KV cache, the attention mask
        (prefix columns included) and the position ids of the own tokens."""
        model, dev, shared = backbone.model, backbone.device, self.shared
        ids, mask, pos = _left_padded(
            [self.prompt_ids[i][shared:] for _, i in chunk], backbone.tokenizer.pad_token_id, shared
        )
        ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
        past = None
        if shared:
            past = self.prefix.rows([a for a, _ in chunk])
            mask = torch.cat([torch.ones(len(chunk), shared, dtype=mask.dtype, device=dev), mask], dim=1)
        with _Routed(model, self.stacked, [self.arm_index[a] for a, _ in chunk]):
            # only the last position's logits: the full [rows, tokens, vocab] tensor is GBs for long prompts
            last, cache = _last_logits(
                model, input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past
            )
        return last, cache, mask, pos


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
    plan = _Plan(backbone, prompts, arms)
    stacked, arm_index, prompt_ids = plan.stacked, plan.arm_index, plan.prompt_ids
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
    pairs = plan.rows
    for start in range(0, len(pairs), batch_rows):
        chunk = pairs[start : start + batch_rows]
        lens = [len(prompt_ids[i]) for _, i in chunk]
        last, cache, mask, _ = plan.prefill(backbone, chunk)
        first = F.log_softmax(last.float(), dim=-1)  # p(first choice token | prompt)
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


class _Pool:
    """Rows being decoded together: their KV cache, attention mask, next positions and tokens so far.

    Rows come from several prefill batches (any arms); a batch joins by left-padding the shorter cache with masked
    zeros, so every row keeps its own positions (RoPE is already applied to cached keys). Rows leave as they finish.
    """

    def __init__(self, cache, mask: torch.Tensor, pos: torch.Tensor, nxt: torch.Tensor, jobs: list[tuple[int, int]]):
        self.cache, self.mask, self.pos, self.nxt, self.jobs = cache, mask, pos, nxt, jobs
        self.tokens: list[list[int]] = [[] for _ in jobs]

    def __len__(self) -> int:
        return len(self.jobs)

    def join(self, other: _Pool) -> None:
        n, m = self.mask.shape[1], other.mask.shape[1]
        width = max(n, m)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)])
        self.pos = torch.cat([self.pos, other.pos])
        self.nxt = torch.cat([self.nxt, other.nxt])
        self.jobs += other.jobs
        self.tokens += other.tokens

    def keep(self, rows: list[int]) -> None:
        idx = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.pos, self.nxt = self.mask[idx], self.pos[idx], self.nxt[idx]
        self.jobs = [self.jobs[r] for r in rows]
        self.tokens = [self.tokens[r] for r in rows]
        dead = int((self.mask.sum(0) == 0).cumprod(0).sum())  # leading columns no row attends to any more
        if dead:
            self.mask = self.mask[:, dead:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, dead:], layer.values[:, :, dead:]


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    n = t.shape[dim]
    if n == width:
        return t
    shape = list(t.shape)
    shape[dim] = width - n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


# Rows decoded together, at most. A decode step streams the weights once however many rows it has (qwen2.5-0.5b,
# fp32, 2 cores: 0.25 s for 16 rows, 0.32 s for 32, 0.67 s for 128), so rows of several prefill batches decode as one.
DECODE_ROWS = 128


@torch.no_grad()
def greedy_generate(
    backbone,
    prompts: Sequence[str],
    arms: Sequence[Arm],
    max_new_tokens: int = 32,
    batch_rows: int = 32,
    decode_rows: int | None = None,
    eos_token_id: int | None = None,
) -> list[list[str]]:
    """Greedy continuations of every prompt under every arm: result[arm][item] (special tokens dropped).

    Prompts are prefilled ``batch_rows`` at a time (arm-major, length-sorted, the shared prefix once per arm);
    their rows then decode in one pool of up to ``decode_rows`` rows, of any arms. A row leaves the pool when it
    emits EOS or reaches ``max_new_tokens``, and the next prefill batch joins as soon as there is room: no step is
    spent on a finished row, and no batch waits for its slowest row before the next starts. Each row's tokens are
    what ``model.generate`` gives it alone (greedy, the same EOS): :func:`hf_greedy_generate` is that reference.
    """
    tok, model = backbone.tokenizer, backbone.model
    plan = _Plan(backbone, prompts, arms)
    stacked, arm_index = plan.stacked, plan.arm_index
    jobs = plan.rows
    out = [[""] * len(prompts) for _ in arms]
    eos = tok.eos_token_id if eos_token_id is None else eos_token_id
    limit = max(decode_rows or DECODE_ROWS, batch_rows)
    chunks = [jobs[s : s + batch_rows] for s in range(0, len(jobs), batch_rows)]

    def prefill(chunk: list[tuple[int, int]]) -> _Pool:
        last, cache, mask, pos = plan.prefill(backbone, chunk)
        return _Pool(cache, mask, pos[:, -1] + 1, last.argmax(-1), list(chunk))

    def finish(pool: _Pool, r: int) -> None:
        a, i = pool.jobs[r]
        out[a][i] = tok.decode(pool.tokens[r], skip_special_tokens=True)

    pool: _Pool | None = None
    while chunks or pool is not None:
        while chunks and (pool is None or len(pool) + len(chunks[0]) <= limit):
            new = prefill(chunks.pop(0))
            if pool is None:
                pool = new
            else:
                pool.join(new)
        live = []
        for r, t in enumerate(pool.nxt.tolist()):
            pool.tokens[r].append(t)
            if t == eos or len(pool.tokens[r]) >= max_new_tokens:
                finish(pool, r)
            else:
                live.append(r)
        if not live:
            pool = None
            continue
        if len(live) < len(pool):
            pool.keep(live)
        pool.mask = torch.cat([pool.mask, pool.mask.new_ones(len(pool), 1)], dim=1)
        with _Routed(model, stacked, [arm_index[a] for a, _ in pool.jobs]):
            last, pool.cache = _last_logits(
                model,
                input_ids=pool.nxt[:, None],
                attention_mask=pool.mask,
                position_ids=pool.pos[:, None],
                past_key_values=pool.cache,
            )
        pool.pos, pool.nxt = pool.pos + 1, last.argmax(-1)
    return out


@torch.no_grad()
def hf_greedy_generate(
    backbone,
    prompts: Sequence[str],
    arms: Sequence[Arm],
    max_new_tokens: int = 32,
    batch_rows: int = 32,
    eos_token_id: int | None = None,
) -> list[list[str]]:
    """The reference for :func:`greedy_generate`: each batch through ``model.generate`` until its slowest row ends.

    Kept as the oracle the tests compare the pooled decoder with."""
    tok, model = backbone.tokenizer, backbone.model
    plan = _Plan(backbone, prompts, arms)
    stacked, arm_index, prompt_ids, shared, prefix = (
        plan.stacked,
        plan.arm_index,
        plan.prompt_ids,
        plan.shared,
        plan.prefix,
    )
    jobs = plan.rows
    out = [[""] * len(prompts) for _ in arms]
    dev = backbone.device
    for start in range(0, len(jobs), batch_rows):
        chunk = jobs[start : start + batch_rows]
        ids, mask, _ = _left_padded([prompt_ids[i][shared:] for _, i in chunk], tok.pad_token_id)
        past = None
        if shared:
            # [shared prefix | padding | own tokens]: the prefix comes from its per-arm cache, the padding is
            # masked, and generate derives positions from the mask, so every token keeps its unpadded position
            past = prefix.rows([a for a, _ in chunk])
            ids = torch.cat([torch.tensor([prompt_ids[0][:shared]] * len(chunk)), ids], dim=1)
            mask = torch.cat([torch.ones(len(chunk), shared, dtype=mask.dtype), mask], dim=1)
        ids, mask = ids.to(dev), mask.to(dev)
        with _Routed(model, stacked, [arm_index[a] for a, _ in chunk]):
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                past_key_values=past,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id if eos_token_id is None else eos_token_id,
            )
        new = gen[:, ids.shape[1] :]
        for r, (a, i) in enumerate(chunk):
            out[a][i] = tok.decode(new[r], skip_special_tokens=True)
    return out
