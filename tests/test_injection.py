import pytest
import torch

from deltalora.config import LoraSpec
from deltalora.lora import InjectionError, LoraWeights, derive_layout, inject

from .helpers import encode, peft_reference

ALL7 = "q,k,v,o,gate,up,down"
TEXTS = ["The capital of France is", "2 + 2 =", "Reverse the word 'lora':"]


def hidden(model, batch, weights=None, rows=None):
    def run():
        out = model(**batch, output_hidden_states=True)
        return out.logits, out.hidden_states[-1]

    if weights is None:
        return run()
    with inject(model, weights, rows=rows):
        return run()


@pytest.mark.parametrize("name", ["tiny_qwen2", "tiny_llama"])
@pytest.mark.parametrize(
    "spec",
    [
        LoraSpec(rank=8, alpha=16, targets="q,v"),
        LoraSpec(rank=4, alpha=32, targets=ALL7),
        LoraSpec(rank=16, alpha=32, targets=ALL7, rslora=True),
        LoraSpec(rank=8, alpha=8, targets="k,o,down", layers=[1]),
    ],
    ids=["r8-qv", "r4-all7", "r16-all7-rslora", "r8-kod-layer1"],
)
def test_equals_stock_peft(name, spec, request):
    b = request.getfixturevalue(name)
    weights = LoraWeights.random(derive_layout(b.arch, spec), std=0.05, seed=1)
    batch = encode(b.tokenizer, TEXTS)
    ref = peft_reference(b.model, weights)
    with torch.no_grad():
        ref_out = ref(**batch, output_hidden_states=True)
        logits, last = hidden(b.model, batch, weights)
        base_logits, _ = hidden(b.model, batch)
    assert (ref_out.logits - base_logits).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(logits, ref_out.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, ref_out.hidden_states[-1], atol=1e-5, rtol=1e-5)


def test_batch_of_k_equals_k_single_runs(tiny_qwen2):
    b = tiny_qwen2
    layout = derive_layout(b.arch, LoraSpec(rank=8, alpha=16, targets=ALL7))
    singles = [LoraWeights.random(layout, std=0.05, seed=s) for s in range(3)]
    stacked = LoraWeights.stack(singles)
    batch = encode(b.tokenizer, TEXTS)
    with torch.no_grad():
        batched, _ = hidden(b.model, batch, stacked)  # row i uses adapter i
        for i, w in enumerate(singles):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            single, _ = hidden(b.model, one, w)
            torch.testing.assert_close(batched[i : i + 1], single, atol=1e-5, rtol=1e-5)


def test_adapter_major_blocks_and_explicit_rows(tiny_qwen2):
    b = tiny_qwen2
    layout = derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,v,up"))
    singles = [LoraWeights.random(layout, std=0.05, seed=s) for s in range(2)]
    stacked = LoraWeights.stack(singles)
    batch = encode(b.tokenizer, TEXTS[:2] * 2)  # rows: t0 t1 t0 t1
    with torch.no_grad():
        blocks, _ = hidden(b.model, batch, stacked)  # rows 0,1 -> adapter 0; rows 2,3 -> adapter 1
        routed, _ = hidden(b.model, batch, stacked, rows=torch.tensor([1, -1, 0, 1]))
        base, _ = hidden(b.model, batch)
        for i, w in enumerate(singles):
            ref, _ = hidden(b.model, batch, w)
            torch.testing.assert_close(blocks[2 * i : 2 * i + 2], ref[2 * i : 2 * i + 2], atol=1e-5, rtol=1e-5)
        ref0, _ = hidden(b.model, batch, singles[0])
        ref1, _ = hidden(b.model, batch, singles[1])
    torch.testing.assert_close(routed[0], ref1[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(routed[1], base[1])  # -1 = base model, exactly
    torch.testing.assert_close(routed[2], ref0[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(routed[3], ref1[3], atol=1e-5, rtol=1e-5)


def assert_each_row_has_its_adapter(routed, rows, base, refs):
    """Row i equals the single-adapter run of adapter rows[i], and a base row (-1) the base model bit for bit."""
    for i, k in enumerate(rows):
        if k < 0:
            assert torch.equal(routed[i], base[i])
        else:
            torch.testing.assert_close(routed[i], refs[k][i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "rows",
    [[1, 1, 1, -1, 0, 0, 1, -1], [1] * 8, [-1] * 8, [0, 0, 0, 0, -1, -1, -1, -1]],
    ids=["two-groups-and-base", "one-adapter-everywhere", "base-only", "one-group-and-base"],
)
def test_rows_grouped_by_adapter_match_single_adapter_runs(tiny_qwen2, rows):
    """Few adapters over many rows (an evaluator batch) take the grouped path: each row still gets exactly
    its adapter, base rows stay bit-identical to the base model, and gradients reach the routed tensors."""
    b = tiny_qwen2
    layout = derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,v,up"))
    singles = [LoraWeights.random(layout, std=0.05, seed=s) for s in range(3)]
    stacked = LoraWeights.stack(singles)
    batch = encode(b.tokenizer, TEXTS[:2] * 4)
    with torch.no_grad():
        base, _ = hidden(b.model, batch)
        refs = [hidden(b.model, batch, w)[0] for w in singles]
    for t in stacked.tensors():
        t.requires_grad_(True)
    routed, _ = hidden(b.model, batch, stacked, rows=torch.tensor(rows))
    assert_each_row_has_its_adapter(routed, rows, base, refs)
    if any(k >= 0 for k in rows):
        routed.float().pow(2).mean().backward()
        g = next(iter(stacked.B.values())).grad
        for k in range(3):
            assert (g[k].abs().sum() > 0) == (k in rows), f"adapter {k}: gradient iff it serves a row"


def test_zero_b_reproduces_base_exactly(tiny_qwen2):
    b = tiny_qwen2
    layout = derive_layout(b.arch, LoraSpec(rank=8, alpha=16, targets=ALL7))
    w = LoraWeights.random(layout, num_adapters=3, seed=0)
    for k in w.B:
        w.B[k] = torch.zeros_like(w.B[k])
    batch = encode(b.tokenizer, TEXTS)
    with torch.no_grad():
        base_logits, base_last = hidden(b.model, batch)
        logits, last = hidden(b.model, batch, w)
    assert torch.equal(logits, base_logits) and torch.equal(last, base_last)


def _grads(model, batch, weights, backward_inside=True):
    for t in weights.tensors():
        t.grad = None
    with inject(model, weights):
        last = model(**batch, output_hidden_states=True).hidden_states[-1]
        loss = last[:, -1].pow(2).sum()
        if backward_inside:
            loss.backward()
    if not backward_inside:
        loss.backward()
    return [t.grad.clone() for t in weights.tensors()]


def lora_hooks(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m._forward_hooks]


def test_every_tensor_gets_nonzero_gradient(tiny_qwen2):
    b = tiny_qwen2
    layout = derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets=ALL7))
    w = LoraWeights.random(layout, num_adapters=3, std=0.05, seed=2)
    for t in w.tensors():
        t.requires_grad_(True)
    grads = _grads(b.model, encode(b.tokenizer, TEXTS), w)
    assert len(grads) == 2 * len(layout.slots)
    for s, (ga, gb) in zip(layout.slots, zip(grads[0::2], grads[1::2])):
        for k in range(3):  # every adapter in the batch, both factors
            assert ga[k].abs().sum() > 0, (s.key, "A", k)
            assert gb[k].abs().sum() > 0, (s.key, "B", k)


def test_gradients_reach_a_generator(tiny_qwen2):
    """LoRA tensors computed from parameters (as a generator's output) pass gradients back to them."""
    b = tiny_qwen2
    layout = derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,v"))
    torch.manual_seed(0)
    cond = torch.randn(2, 16)
    heads = torch.nn.ModuleDict(
        {s.key.replace(".", "_"): torch.nn.Linear(16, s.rank * (s.in_features + s.out_features)) for s in layout.slots}
    )
    A, B = {}, {}
    for s in layout.slots:
        flat = heads[s.key.replace(".", "_")](cond) * 0.05
        A[s.key] = flat[:, : s.rank * s.in_features].reshape(2, *s.a_shape)
        B[s.key] = flat[:, s.rank * s.in_features :].reshape(2, *s.b_shape)
    w = LoraWeights(layout, A, B)
    with inject(b.model, w):
        last = b.model(**encode(b.tokenizer, TEXTS[:2]), output_hidden_states=True).hidden_states[-1]
    last[:, -1].pow(2).sum().backward()
    for name, p in heads.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_same_gradients(tiny_qwen2):
    b = tiny_qwen2
    layout = derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets=ALL7))
    w = LoraWeights.random(layout, num_adapters=3, std=0.05, seed=3)
    for t in w.tensors():
        t.requires_grad_(True)
    batch = encode(b.tokenizer, TEXTS)
    plain = _grads(b.model, batch, w, backward_inside=False)  # without checkpointing the graph holds everything
    try:
        b.model.train()
        b.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ckpt = _grads(b.model, batch, w)
        # Recomputation happens during backward: after the block the hooks are gone, and torch says so loudly.
        with pytest.raises(torch.utils.checkpoint.CheckpointError):
            _grads(b.model, batch, w, backward_inside=False)
        b.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        with pytest.raises(InjectionError, match="use_reentrant"):
            _grads(b.model, batch, w)
    finally:
        b.model.gradient_checkpointing_disable()
        b.model.eval()
    for g1, g2 in zip(plain, ckpt):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)


def test_hooks_removed_even_on_error(tiny_qwen2):
    b = tiny_qwen2
    layout = derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,v"))
    w = LoraWeights.random(layout, num_adapters=2, seed=0)
    batch = encode(b.tokenizer, TEXTS)  # 3 rows cannot be split over 2 adapters
    with pytest.raises(InjectionError, match="cannot be split"):
        hidden(b.model, batch, w)
    assert lora_hooks(b.model) == []
    with pytest.raises(InjectionError, match="rows has 2 entries"):
        hidden(b.model, batch, w, rows=torch.tensor([0, 1]))
    with pytest.raises(InjectionError, match=r"rows must be in \[-1, 1\]"):
        hidden(b.model, batch, w, rows=torch.tensor([0, 1, 2]))
    assert lora_hooks(b.model) == []


def test_layout_mismatch_is_refused(tiny_qwen2, tiny_llama):
    w = LoraWeights.random(derive_layout(tiny_llama.arch, LoraSpec(rank=4, targets="up")))
    with pytest.raises(InjectionError, match="expected Linear"):
        with inject(tiny_qwen2.model, w):
            pass


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad-in-place", "autograd"])
def test_runs_of_rows_match_single_adapter_runs(tiny_qwen2, grad):
    """An evaluator's arm-major batch (runs of rows per adapter, base rows among them) takes the slice path: with no
    autograd it adds into the frozen linear's output in place; either way every row gets exactly its adapter."""
    from deltalora.lora.injection import _Router

    b = tiny_qwen2
    layout = derive_layout(b.arch, LoraSpec(rank=4, alpha=8, targets="q,v,up,down"))
    singles = [LoraWeights.random(layout, std=0.05, seed=s) for s in range(3)]
    stacked = LoraWeights.stack(singles)
    rows = [2, 2, 2, 2, -1, -1, -1, -1, 0, 0, 0, 0]
    assert _Router(3, torch.tensor(rows)).runs == [(2, 0, 4), (-1, 4, 8), (0, 8, 12)]  # the path under test
    assert _Router(3, torch.tensor([0, 1] * 6)).runs is None  # interleaved rows: too many runs, gather instead
    batch = encode(b.tokenizer, TEXTS[:2] * 6)
    with torch.no_grad():
        base, _ = hidden(b.model, batch)
        refs = [hidden(b.model, batch, w)[0] for w in singles]
    if grad:
        for t in stacked.tensors():
            t.requires_grad_(True)
    with torch.set_grad_enabled(grad):
        routed, _ = hidden(b.model, batch, stacked, rows=torch.tensor(rows))
    assert_each_row_has_its_adapter(routed, rows, base, refs)
    if grad:
        routed.float().pow(2).mean().backward()
        g = next(iter(stacked.A.values())).grad
        assert [bool(g[k].abs().sum() > 0) for k in range(3)] == [True, False, True]
