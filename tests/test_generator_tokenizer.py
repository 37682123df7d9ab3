"""DnD LoRA tokenizer: derived token counts, exact round trips over a layout matrix, gradients, loss weights."""

import math

import pytest
import torch

from deltalora.backbones import architecture_of
from deltalora.config import LoraSpec
from deltalora.errors import ConfigError
from deltalora.generators.tokenizer import LoraTokenizer, criterion_weights, weighted_token_mse
from deltalora.lora import LoraWeights, derive_layout

ALL7 = "q,k,v,o,gate,up,down"


def layout_of(backbone, rank=8, targets=ALL7, layers=None):
    return derive_layout(architecture_of(backbone), LoraSpec(rank=rank, alpha=2 * rank, targets=targets, layers=layers))


def max_err(w, w2):
    return max((w.A[k] - w2.A[k]).abs().max().item() for k in w.A) + max(
        (w.B[k] - w2.B[k]).abs().max().item() for k in w.B
    )


# --- DnD's published counts, derived ------------------------------------------------------------


@pytest.mark.parametrize(
    "backbone, rank, tokens, shape, per_module, gate_split",
    [
        (
            "qwen2.5-1.5b",
            16,
            4508,
            (18, 258),
            {"q_proj": 12, "k_proj": 7, "v_proj": 7, "o_proj": 12, "gate_proj": 41, "up_proj": 41, "down_proj": 41},
            (6, 35),
        ),
        (
            "qwen2.5-coder-0.5b-instruct",
            8,
            4296,
            (10, 130),
            {"q_proj": 14, "k_proj": 8, "v_proj": 8, "o_proj": 14, "gate_proj": 45, "up_proj": 45, "down_proj": 45},
            (7, 38),
        ),
    ],
)
def test_dnd_token_counts(backbone, rank, tokens, shape, per_module, gate_split):
    tok = LoraTokenizer(layout_of(backbone, rank))
    assert tok.num_tokens == tokens
    assert tok.token_shape == shape
    assert not tok.padded
    for module, n in per_module.items():
        assert len(tok.slot_tokens(f"3.{module}")) == n
    # A chunks come before Bᵀ chunks inside a slot, and slots follow the layout order.
    first = [tok.index[t] for t in tok.slot_tokens("0.gate_proj")]
    assert [t.matrix for t in first] == ["A"] * gate_split[0] + ["B"] * gate_split[1]  # DnD's split
    assert tok.index[0].slot_key == "0.q_proj" and tok.index[-1].slot_key.endswith(".down_proj")


def test_dnd_full_size_round_trip_coder_05b():
    layout = layout_of("qwen2.5-coder-0.5b-instruct", 8)
    tok = LoraTokenizer(layout)
    w = LoraWeights.random(layout, seed=3)
    tokens = tok.tokenize(w)
    assert tokens.shape == (4296, 10, 130) and tokens.dtype == torch.float32
    assert max_err(w, tok.detokenize(tokens)) <= 1e-6


# --- round trips over a layout matrix ------------------------------------------------------------

ARCHS = [
    ("tiny-qwen2", None),
    ("tiny-llama", None),
    ("qwen2.5-coder-0.5b-instruct", [0, 23]),  # a layer subset keeps the real-architecture cases fast
    ("qwen2.5-1.5b", [5]),
]


@pytest.mark.parametrize("backbone, layers", ARCHS, ids=[a for a, _ in ARCHS])
@pytest.mark.parametrize("rank", [4, 8, 16])
@pytest.mark.parametrize("targets", ["q,v", ALL7], ids=["qv", "all7"])
@pytest.mark.parametrize("k", [None, 2])
def test_round_trip_exact(backbone, layers, rank, targets, k):
    layout = layout_of(backbone, rank, targets, layers)
    tok = LoraTokenizer(layout)
    w = LoraWeights.random(layout, num_adapters=k, seed=rank)
    tokens = tok.tokenize(w)
    lead = () if k is None else (k,)
    assert tokens.shape == (*lead, tok.num_tokens, rank + 2, tok.chunk_size + 2)
    assert tokens.dtype == torch.float32
    assert sum(s.num_params for s in layout.slots) == tok.num_tokens * rank * tok.chunk_size  # exact tiling
    back = tok.detokenize(tokens)
    assert back.num_adapters == k
    assert max_err(w, back) <= 1e-6


def test_token_cells_hold_what_the_docstring_says():
    layout = layout_of("tiny-llama", 4)
    tok = LoraTokenizer(layout)
    w = LoraWeights.random(layout, seed=1)
    tokens = tok.tokenize(w)
    r, c = tok.rank, tok.chunk_size
    for t in (0, 5, tok.num_tokens - 1):
        info = tok.index[t]
        mat = w.A[info.slot_key] if info.matrix == "A" else w.B[info.slot_key].T
        chunk = mat[:, info.start : info.start + info.width]
        mean, std = chunk.mean(), chunk.std(unbiased=False)
        tk = tokens[t]
        torch.testing.assert_close(tk[:r, :c], (chunk - mean) / std, atol=1e-4, rtol=1e-4)
        assert torch.allclose(tk[:r, c], mean.expand(r)) and torch.allclose(tk[r, :], mean.expand(c + 2))
        assert torch.allclose(tk[:r, c + 1], std.log().expand(r), atol=1e-5)
        assert torch.allclose(tk[r + 1, :], std.log().expand(c + 2), atol=1e-5)
    assert "B chunk" in tok.describe(tok.num_tokens - 1)


def test_zero_weights_stay_finite():
    """An untrained B is all zeros: eps keeps its tokens and gradients finite."""
    layout = layout_of("tiny-qwen2", 4)
    tok = LoraTokenizer(layout)
    w = LoraWeights.zeros(layout, num_adapters=2)
    for t in w.tensors():
        t.requires_grad_(True)
    tokens = tok.tokenize(w)
    assert torch.isfinite(tokens).all()
    assert max_err(w, tok.detokenize(tokens)) == 0.0
    tokens.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in w.tensors())


# --- chunk width options and padding --------------------------------------------------------------


def test_chunk_width_is_the_gcd_and_max_chunk_keeps_exact_tiling():
    layout = layout_of("tiny-llama", 4)  # features 64, 96, 32 -> gcd 32
    assert LoraTokenizer(layout).chunk_size == 32
    capped = LoraTokenizer(layout, max_chunk=20)
    assert capped.chunk_size == 16 and not capped.padded
    assert capped.num_tokens == 2 * LoraTokenizer(layout).num_tokens


@pytest.mark.parametrize("k", [None, 2])
def test_padded_chunks_round_trip_and_are_recorded(k):
    layout = layout_of("tiny-llama", 8)
    tok = LoraTokenizer(layout, chunk_size=24)
    assert tok.padded
    padded = [t for t in tok.index if t.width < 24]
    slots = layout.by_key()
    # 64 -> 24+24+16, 32 -> 24+8, 96 -> 4x24: only last chunks of 64- and 32-wide axes are padded
    assert {t.width for t in padded} == {16, 8}
    for t in padded:
        s = slots[t.slot_key]
        assert t.start + t.width == (s.in_features if t.matrix == "A" else s.out_features)
    w = LoraWeights.random(layout, num_adapters=k, seed=7)
    tokens = tok.tokenize(w)
    assert max_err(w, tok.detokenize(tokens)) <= 1e-6
    t = padded[0]
    zcells = tokens[..., t.token, : tok.rank, t.width : 24]
    assert zcells.numel() > 0 and (zcells == 0).all()
    mask = tok.cell_mask()
    assert not mask[t.token, : tok.rank, t.width : 24].any() and mask[t.token, : tok.rank, : t.width].all()
    # standardised over the valid cells only
    valid = tokens[..., t.token, : tok.rank, : t.width]
    torch.testing.assert_close(valid.mean(dim=(-2, -1)), torch.zeros(valid.shape[:-2]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs", [{"chunk_size": 0}, {"max_chunk": -1}, {"chunk_size": 16, "max_chunk": 16}, {"eps": 0.0}]
)
def test_bad_tokenizer_options(kwargs):
    with pytest.raises(ConfigError):
        LoraTokenizer(layout_of("tiny-qwen2", 4), **kwargs)


def test_mismatched_inputs_are_rejected():
    tok = LoraTokenizer(layout_of("tiny-qwen2", 4))
    with pytest.raises(ValueError, match="different layout"):
        tok.tokenize(LoraWeights.random(layout_of("tiny-qwen2", 8)))
    with pytest.raises(ValueError, match="expected"):
        tok.detokenize(torch.zeros(tok.num_tokens + 1, *tok.token_shape))


# --- gradients -----------------------------------------------------------------------------------


def test_gradients_flow_through_tokenize_and_detokenize():
    layout = layout_of("tiny-llama", 4)
    tok = LoraTokenizer(layout, chunk_size=24)  # include padded chunks
    w = LoraWeights.random(layout, num_adapters=2, seed=0)
    for t in w.tensors():
        t.requires_grad_(True)
    tokens = tok.tokenize(w)
    probe = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(0))
    (tokens * probe).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in w.tensors())

    pred = tokens.detach().clone().requires_grad_(True)
    out = tok.detokenize(pred)
    sum(x.square().sum() for x in out.tensors()).backward()
    g = pred.grad
    r, c = tok.rank, tok.chunk_size
    assert torch.isfinite(g).all()
    assert (g[..., :r, c:].abs() > 0).all() and (g[..., r:, :].abs() > 0).all()  # every border cell is read
    pad = next(t for t in tok.index if t.width < c)
    assert (g[:, pad.token, :r, pad.width : c] == 0).all()  # padding cells do not reach any weight


# --- criterion weights and the token loss ----------------------------------------------------------


def test_criterion_weights_follow_teacher_spread():
    gen = torch.Generator().manual_seed(0)
    n, T = 6, 5
    base = torch.randn(T, 4, 6, generator=gen)
    teachers = base.expand(n, -1, -1, -1).clone()
    teachers[:, 1] += 3.0 * torch.randn(n, 4, 6, generator=gen)  # high variance token
    teachers[:, 2:] += 0.3 * torch.randn(n, T - 2, 4, 6, generator=gen)  # moderate ones; token 0 constant
    w = criterion_weights(teachers)
    assert w.shape == (T,)
    assert math.isclose(w.mean().item(), 1.0, rel_tol=1e-6)
    assert w[0].item() == 0.0
    assert w[1] == w.max() and (w[1] > 3 * w[2:]).all()
    # invariant to a global rescale of the teacher set
    torch.testing.assert_close(criterion_weights(teachers * 10.0), w)
    floored = criterion_weights(teachers, floor=0.5)
    assert math.isclose(floored.mean().item(), 1.0, rel_tol=1e-6)
    assert floored[0] > 0 and floored[1] < w[1]
    assert (criterion_weights(base.expand(3, -1, -1, -1)) == 1).all()  # no spread at all -> uniform
    with pytest.raises(ValueError):
        criterion_weights(teachers[:1])


def test_weighted_token_mse():
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 4, 3, 5, generator=gen), torch.randn(2, 4, 3, 5, generator=gen)
    plain = torch.nn.functional.mse_loss(pred, target)
    torch.testing.assert_close(weighted_token_mse(pred, target), plain)
    torch.testing.assert_close(weighted_token_mse(pred, target, torch.ones(4)), plain)
    # a zero-weighted token's error does not count
    w = torch.tensor([0.0, 2.0, 1.0, 1.0])
    bumped = target.clone()
    bumped[:, 0] += 100.0
    torch.testing.assert_close(weighted_token_mse(pred, bumped, w), weighted_token_mse(pred, target, w))
    assert weighted_token_mse(pred, bumped) > 100 * plain
    # masked cells do not count
    mask = torch.ones(4, 3, 5, dtype=torch.bool)
    mask[:, :, -1] = False
    bumped = target.clone()
    bumped[..., -1] += 100.0
    torch.testing.assert_close(weighted_token_mse(pred, bumped, mask=mask), weighted_token_mse(pred, target, mask=mask))
    with pytest.raises(ValueError):
        weighted_token_mse(pred, target[:1])
    with pytest.raises(ValueError):
        weighted_token_mse(pred, target, torch.ones(3))
