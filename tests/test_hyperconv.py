"""HyperConv generator: shapes from the layout, determinism, gradients, rebuild from spec, option errors."""

import json

import pytest
import torch

from deltalora.backbones import architecture_of
from deltalora.config import LoraSpec
from deltalora.errors import ConfigError
from deltalora.generators import build_generator, generator_names, num_parameters
from deltalora.generators.hyperconv import HyperConvLayer, hyperconv_num_parameters
from deltalora.lora import LoraWeights, derive_layout

ALL7 = "q,k,v,o,gate,up,down"
COND_DIM, N_PROMPTS = 384, 8


def layout_of(backbone, rank=4, targets=ALL7, layers=None):
    return derive_layout(architecture_of(backbone), LoraSpec(rank=rank, alpha=2 * rank, targets=targets, layers=layers))


def cond(k, seed=0, n_prompts=N_PROMPTS, cond_dim=COND_DIM):
    return torch.randn(k, n_prompts, cond_dim, generator=torch.Generator().manual_seed(seed))


def assert_fits(w: LoraWeights, layout, k):
    assert w.num_adapters == k
    for s in layout.slots:
        assert w.A[s.key].shape == (k, *s.a_shape) and w.B[s.key].shape == (k, *s.b_shape)
        assert torch.isfinite(w.A[s.key]).all() and torch.isfinite(w.B[s.key]).all()


def test_registered():
    assert "hyperconv" in generator_names()


@pytest.mark.parametrize("targets", ["q,v", ALL7])
def test_tiny_qwen2_shapes(targets):
    layout = layout_of("tiny-qwen2", 4, targets)
    torch.manual_seed(0)
    gen = build_generator("hyperconv", layout, COND_DIM, N_PROMPTS)
    c = cond(3)
    tokens = gen.forward_tokens(c)
    assert tokens.shape == (3, gen.tokenizer.num_tokens, *gen.tokenizer.token_shape)
    assert gen.features[0] == (N_PROMPTS, 16, 24) and gen.features[-1] == tuple(tokens.shape[1:])
    w = gen(c)
    assert_fits(w, layout, 3)
    # forward is exactly detokenize(forward_tokens): DnD's token loss and the weights see the same output
    again = gen.tokenizer.detokenize(tokens)
    assert all(torch.equal(a, b) for a, b in zip(w.tensors(), again.tensors()))


def test_real_architecture_layer_subset_shapes():
    """Qwen2.5-1.5B r16 all-7 shapes (one decoder layer, small width) — only the layout, no backbone weights."""
    layout = layout_of("qwen2.5-1.5b", 16, ALL7, layers=[0])
    torch.manual_seed(0)
    gen = build_generator("hyperconv", layout, COND_DIM, N_PROMPTS, width_mult=0.1, num_layers=3)
    assert gen.tokenizer.num_tokens == 161 and gen.tokenizer.token_shape == (18, 258)
    w = gen(cond(2))
    assert_fits(w, layout, 2)


@pytest.mark.parametrize(
    "backbone, rank, tokens",
    [("qwen2.5-1.5b", 16, 4508), ("qwen2.5-coder-0.5b-instruct", 8, 4296)],
)
def test_full_size_parameter_count_is_computable(backbone, rank, tokens):
    layout = layout_of(backbone, rank)
    for opts in ({"width_mult": 0.02, "num_layers": 2}, {"kernel_size": 1}):
        gen = build_generator("hyperconv", layout, COND_DIM, N_PROMPTS, **opts)
        assert gen.features[-1][0] == tokens
        assert num_parameters(gen) == hyperconv_num_parameters(layout, COND_DIM, N_PROMPTS, **opts)
    # the default size, without allocating it: the last plane conv (L_{n-1} x T x k^2) dominates
    default = hyperconv_num_parameters(layout, COND_DIM, N_PROMPTS)
    small = hyperconv_num_parameters(layout, COND_DIM, N_PROMPTS, width_mult=0.25)
    assert default > 3 * small > 0


def test_deterministic_under_seed():
    layout = layout_of("tiny-llama", 8)
    torch.manual_seed(123)
    g1 = build_generator("hyperconv", layout, COND_DIM, N_PROMPTS)
    torch.manual_seed(123)
    g2 = build_generator("hyperconv", layout, COND_DIM, N_PROMPTS)
    s1, s2 = g1.state_dict(), g2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    c = cond(2)
    assert torch.equal(g1.forward_tokens(c), g2.forward_tokens(c))
    torch.manual_seed(124)
    g3 = build_generator("hyperconv", layout, COND_DIM, N_PROMPTS)
    assert not torch.equal(g3.forward_tokens(c), g1.forward_tokens(c))
    # each adapter depends on its own condition only
    t = g1.forward_tokens(c)
    assert torch.allclose(g1.forward_tokens(c[1:]), t[1:], atol=1e-5)
    assert not torch.allclose(t[0], t[1])


@pytest.mark.parametrize("through", ["tokens", "weights"])
def test_gradients_reach_all_parameters(through):
    layout = layout_of("tiny-qwen2", 4)
    torch.manual_seed(0)
    gen = build_generator("hyperconv", layout, COND_DIM, N_PROMPTS, num_layers=3)
    c = cond(2)
    if through == "tokens":
        target = gen.tokenizer.tokenize(LoraWeights.random(layout, num_adapters=2, seed=1))
        loss = torch.nn.functional.mse_loss(gen.forward_tokens(c), target)
    else:
        w = gen(c)
        loss = sum(x.square().mean() for x in w.tensors())
    loss.backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_rebuild_from_spec():
    layout = layout_of("tiny-llama", 4, "q,v")
    torch.manual_seed(0)
    gen = build_generator("hyperconv", layout, COND_DIM, N_PROMPTS, width_mult=0.5, num_layers=3, kernel_size=5)
    spec = json.loads(json.dumps(gen.spec))  # JSON-able, as a checkpoint stores it
    assert spec["name"] == "hyperconv" and spec["options"]["cond_rows"] == 16
    rebuilt = build_generator(spec["name"], layout, spec["cond_dim"], spec["n_prompts"], **spec["options"])
    assert rebuilt.features == gen.features and rebuilt.spec == gen.spec
    shapes = {k: v.shape for k, v in gen.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    rebuilt.load_state_dict(gen.state_dict())  # strict
    c = cond(1)
    assert torch.equal(rebuilt.forward_tokens(c), gen.forward_tokens(c))
    # options are per instance: a second generator with other options leaves the first one's spec alone
    other = build_generator("hyperconv", layout, 64, 2, width_mult=2.0)
    assert gen.spec["options"]["width_mult"] == 0.5 and other.spec["options"]["width_mult"] == 2.0
    assert gen.features != other.features


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width_mult": 0},
        {"width_mult": -1.0},
        {"num_layers": 0},
        {"kernel_size": 2},
        {"cond_rows": 7},  # does not divide 384
        {"depth": 3},  # unknown option
        {"chunk_size": 16, "max_chunk": 16},
        {"chunk_size": 0},
    ],
)
def test_bad_options_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        build_generator("hyperconv", layout_of("tiny-qwen2"), COND_DIM, N_PROMPTS, **kwargs)


@pytest.mark.parametrize("cond_dim, n_prompts", [(0, 8), (384, 0), (384.0, 8)])
def test_bad_sizes_raise_config_error(cond_dim, n_prompts):
    with pytest.raises(ConfigError):
        build_generator("hyperconv", layout_of("tiny-qwen2"), cond_dim, n_prompts)


def test_wrong_condition_shape():
    gen = build_generator("hyperconv", layout_of("tiny-qwen2"), COND_DIM, N_PROMPTS)
    with pytest.raises(ValueError, match="expected"):
        gen(cond(2, n_prompts=N_PROMPTS + 1))
    with pytest.raises(ValueError, match="expected"):
        gen(torch.zeros(N_PROMPTS, COND_DIM))


def test_axis_convolutions_mix_the_axis_they_name():
    """With 1x1 all-ones kernels, the W-axis conv sums over W and the H-axis conv over H — a ``.view``
    in place of the permutes would mix unrelated entries and fail this."""
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    conv_w = torch.nn.Conv2d(5, 1, 1, bias=False)
    conv_h = torch.nn.Conv2d(4, 1, 1, bias=False)
    torch.nn.init.ones_(conv_w.weight)
    torch.nn.init.ones_(conv_h.weight)
    with torch.no_grad():
        torch.testing.assert_close(HyperConvLayer._along_w(x, conv_w), x.sum(dim=3, keepdim=True))
        torch.testing.assert_close(HyperConvLayer._along_h(x, conv_h), x.sum(dim=2, keepdim=True))
