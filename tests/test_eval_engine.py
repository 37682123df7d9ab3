import torch
import torch.nn.functional as F

from deltalora.config import LoraSpec
from deltalora.eval import choice_logprobs, greedy_generate
from deltalora.lora import LoraWeights, derive_layout

from .helpers import peft_reference

PROMPTS = ["<|im_start|>user\nPick one<|im_end|>\n<|im_start|>assistant\n", "Q: colour of sky?\nA:"]
CHOICES = [["yes", "no", "maybe"], [" blue", " green"]]


def _manual_logprob(model, tok, prompt, choice):
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    t = tok(choice, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + t])
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return float(sum(logp[len(p) - 1 + j, tok_id] for j, tok_id in enumerate(t)))


def test_choice_logprobs_match_unbatched_and_peft(tiny_qwen2):
    b = tiny_qwen2
    layout = derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,v,down"))
    w1, w2 = (LoraWeights.random(layout, std=0.1, seed=s) for s in (1, 2))
    res = choice_logprobs(b, PROMPTS, CHOICES, [None, w1, w2], batch_rows=5)
    ref1 = peft_reference(b.model, w1)
    for i, (prompt, opts) in enumerate(zip(PROMPTS, CHOICES)):
        for c, opt in enumerate(opts):
            assert abs(res[0][i][c] - _manual_logprob(b.model, b.tokenizer, prompt, opt)) < 1e-4
            assert abs(res[1][i][c] - _manual_logprob(ref1, b.tokenizer, prompt, opt)) < 1e-4
    alone = choice_logprobs(b, PROMPTS, CHOICES, [w2])
    assert torch.allclose(torch.tensor(alone[0][1]), torch.tensor(res[2][1]), atol=1e-4)
    assert res[1] != res[0]  # the adapter changes the scores


def test_shared_prompt_cache_scores_multi_token_choices_exactly(tiny_qwen2):
    """Prompts of different lengths (left padding), choices of 1..4 tokens, sub-chunks smaller than an item's
    choice list: every score equals the full ``prompt + choice`` forward, for the base and for an adapter."""
    b = tiny_qwen2
    prompts = [PROMPTS[0], "Short:", PROMPTS[1] + " (think)", "x", "Pick:"]
    choices = [[" light blue sky", "no", "A"], [" a b c d", "e", " f g"], [" blue", " dark green grass"], ["y", " z z"]]
    choices.append(["A", "y"])  # one-token choices only: no continuation forward
    w = LoraWeights.random(derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,k,o,up")), std=0.1, seed=3)
    ref = peft_reference(b.model, w)
    lens = {len(b.tokenizer(c, add_special_tokens=False)["input_ids"]) for opts in choices for c in opts}
    assert max(lens) >= 3 and min(lens) == 1  # the case this test is about
    for batch_rows in (2, 3, 32):
        res = choice_logprobs(b, prompts, choices, [w, None], batch_rows=batch_rows)
        for i, (prompt, opts) in enumerate(zip(prompts, choices)):
            for c, opt in enumerate(opts):
                assert abs(res[1][i][c] - _manual_logprob(b.model, b.tokenizer, prompt, opt)) < 1e-4
                assert abs(res[0][i][c] - _manual_logprob(ref, b.tokenizer, prompt, opt)) < 1e-4


def test_greedy_generate_matches_peft_and_single_runs(tiny_qwen2):
    b = tiny_qwen2
    layout = derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,v,down"))
    w = LoraWeights.random(layout, std=0.2, seed=5)
    batched = greedy_generate(b, PROMPTS, [None, w], max_new_tokens=6, batch_rows=3)
    ref = peft_reference(b.model, w)
    for i, prompt in enumerate(PROMPTS):
        single = greedy_generate(b, [prompt], [w], max_new_tokens=6)[0][0]
        assert single == batched[1][i]
        ids = b.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            g = ref.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=b.tokenizer.pad_token_id)
        assert b.tokenizer.decode(g[0, ids["input_ids"].shape[1] :], skip_special_tokens=True) == single
    assert batched[0] != batched[1]


def test_batches_group_prompts_of_similar_length(tiny_qwen2):
    """Rows are length-sorted before batching: interleaved long/short prompts pad only within their own group."""
    b = tiny_qwen2
    long_p, short_p = "word " * 40, "hi"
    prompts = [long_p, short_p, long_p + "x", short_p + "y"]
    seen = []
    hook = b.model.model.embed_tokens.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        choice_logprobs(b, prompts, [["a", "b"]] * 4, [None], batch_rows=2)
        prompt_batches = [s for s in seen if s[1] > 1]  # the continuation forwards are one token here
        seen.clear()
        greedy_generate(b, prompts, [None], max_new_tokens=1, batch_rows=2)
    finally:
        hook.remove()
    n = [len(b.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    sorted_cost = 2 * max(n[1], n[3]) + 2 * max(n[0], n[2])  # two rows per batch, short pair and long pair
    assert sum(r * t for r, t in prompt_batches) == sorted_cost
    assert sum(r * t for r, t in seen) == sorted_cost


SYSTEM = "<|im_start|>system\nYou are a careful assistant. Answer with one word.<|im_end|>\n<|im_start|>user\n"
SHARED = [
    SYSTEM + q + "<|im_end|>\n<|im_start|>assistant\n"
    for q in ("Sky?", "What colour is grass in spring, usually?", "Hm", "Name a fruit that is red.")
]


def test_shared_prompt_prefix_runs_once_per_arm_and_changes_no_score(tiny_qwen2):
    """Prompts that share a long prefix (a chat template's system turn): the prefix runs once per arm and call,
    and every score and every greedy continuation is still what the full, unbatched forward gives."""
    from deltalora.eval.engine import MIN_SHARED_PREFIX, _shared_prefix

    b = tiny_qwen2
    tok = b.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in SHARED]
    shared = _shared_prefix(ids)
    assert shared >= MIN_SHARED_PREFIX and shared < min(map(len, ids))
    layout = derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,k,v,down"))
    w1, w2 = (LoraWeights.random(layout, std=0.2, seed=s) for s in (7, 8))
    choices = [[" blue", " dark grey"], [" green", " brown earth"], ["a", " b c"], [" apple", " cherry"]]
    refs = {0: b.model, 1: peft_reference(b.model, w1), 2: peft_reference(b.model, w2)}
    seen = []
    hook = b.model.model.embed_tokens.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        for batch_rows in (3, 5, 32):  # batches that hold one, two or three arms
            seen.clear()
            res = choice_logprobs(b, SHARED, choices, [None, w1, w2], batch_rows=batch_rows)
            # batches are arm-major (12 rows: 3 arms x 4 prompts); the prefix runs once per arm and call, in the
            # first batch that holds the arm, and later batches reuse its cache
            first_seen, new_arms = set(), []
            for k in range(0, 12, batch_rows):
                arms = {r // 4 for r in range(k, min(k + batch_rows, 12))} - first_seen
                first_seen |= arms
                if arms:
                    new_arms.append(len(arms))
            assert [r for r, t in seen if t == shared] == new_arms and sum(new_arms) == 3
            assert max(t for r, t in seen if t != shared) <= max(map(len, ids)) - shared  # the rest: own tokens only
            for a, model in refs.items():
                for i, (prompt, opts) in enumerate(zip(SHARED, choices)):
                    for c, opt in enumerate(opts):
                        assert abs(res[a][i][c] - _manual_logprob(model, tok, prompt, opt)) < 1e-4
            texts = greedy_generate(b, SHARED, [None, w1, w2], max_new_tokens=5, batch_rows=batch_rows)
            for a, model in refs.items():
                for i, prompt in enumerate(SHARED):
                    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
                    with torch.no_grad():
                        g = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
                    assert texts[a][i] == tok.decode(g[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        hook.remove()
    assert len({tuple(t) for t in texts}) == 3  # the adapters change the continuations


def test_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    from deltalora.eval.engine import MIN_SHARED_PREFIX, _shared_prefix

    base = list(range(100, 100 + 2 * MIN_SHARED_PREFIX))
    assert _shared_prefix([base, base + [1, 2]]) == len(base) - 1  # one prompt is the whole prefix
    assert _shared_prefix([base + [1], base + [2]]) == len(base)
    assert (
        _shared_prefix([base[: MIN_SHARED_PREFIX - 1] + [1, 2, 3], base[: MIN_SHARED_PREFIX - 1] + [4, 5, 6]]) == 0
    )  # too short to bother
    assert _shared_prefix([[1] + base, [2] + base]) == 0
    assert _shared_prefix([]) == 0


def test_pooled_decoding_equals_generate_when_rows_stop_at_different_steps(tiny_qwen2):
    """Rows leave the decode pool at EOS and later prefill batches join it (a pool smaller than the rows, batches
    of different prompt lengths, several arms): every continuation is still what ``model.generate`` gives."""
    from deltalora.eval.engine import hf_greedy_generate

    b = tiny_qwen2
    tok = b.tokenizer
    prompts = [
        SYSTEM + q + "<|im_end|>\n<|im_start|>assistant\n"
        for q in (
            "Sky?",
            "Grass?",
            "A long question about the colour of the sea at night?",
            "Hm",
            "Why?",
            "x y z",
            "Name it.",
        )
    ]
    w = LoraWeights.random(derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,v,down")), std=0.2, seed=11)
    free = hf_greedy_generate(b, prompts, [None, w], max_new_tokens=8, batch_rows=4)
    # make a token that some rows emit mid-way the EOS, so that rows finish after 1..8 tokens
    counts = {}
    for text in free[0] + free[1]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for t in set(ids[1:6]):
            counts[t] = counts.get(t, 0) + 1
    stop = max(counts, key=counts.get)
    ref = hf_greedy_generate(b, prompts, [None, w], max_new_tokens=8, batch_rows=4, eos_token_id=stop)
    lengths = {len(tok(t, add_special_tokens=False)["input_ids"]) for arm in ref for t in arm}
    assert len(lengths) >= 3, lengths  # rows really stop at different steps
    for decode_rows in (4, 6, 64):  # refills while rows are live, and one pool for everything
        assert (
            greedy_generate(
                b, prompts, [None, w], max_new_tokens=8, batch_rows=4, decode_rows=decode_rows, eos_token_id=stop
            )
            == ref
        )
