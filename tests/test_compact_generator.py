"""The compact generator: shapes from the layout, ΔW = 0 at init, PEFT's A distribution, gradients, size vs
hyperconv."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from peft import get_peft_model
from typer.testing import CliRunner

from deltalora.backbones import architecture_of
from deltalora.cli import app
from deltalora.config import LoraSpec
from deltalora.errors import ConfigError
from deltalora.generators import build_generator, generator_names, num_parameters
from deltalora.generators.checkpoint import meta_parameters
from deltalora.generators.compact import CompactGenerator
from deltalora.generators.sizes import generator_sizes
from deltalora.lora import LoraWeights, derive_layout, inject
from deltalora.lora.adapter_io import peft_lora_config

ALL7 = "q,k,v,o,gate,up,down"
SPECS = {
    "r4-qv": LoraSpec(rank=4, alpha=8, targets="q,v"),
    "r8-all7": LoraSpec(rank=8, alpha=16, targets=ALL7),
    "r2-all7-layer1": LoraSpec(rank=2, alpha=4, targets=ALL7, layers=[1]),
}
COND_DIM, N_PROMPTS = 24, 5
TEXT = ["Generators map prompts to LoRA weights.", "A second, longer line of text for the batch."]


def make(layout, seed=0, **options) -> CompactGenerator:
    torch.manual_seed(seed)
    return build_generator("compact", layout, COND_DIM, N_PROMPTS, **options)


def cond(k=3, n=N_PROMPTS, seed=1):
    return torch.randn(k, n, COND_DIM, generator=torch.Generator().manual_seed(seed))


def lm_loss(b, ids):
    out = b.model(**ids)
    logits = out.logits[:, :-1].float()
    labels = ids["input_ids"][:, 1:]
    mask = ids["attention_mask"][:, 1:].bool()
    return torch.nn.functional.cross_entropy(logits[mask], labels[mask])


@pytest.mark.parametrize("name", ["tiny_qwen2", "tiny_llama"])
@pytest.mark.parametrize("spec_id", list(SPECS))
def test_output_shapes_follow_the_layout(name, spec_id, request):
    b = request.getfixturevalue(name)
    layout = derive_layout(b.arch, SPECS[spec_id])
    gen = make(layout)
    w = gen(cond(k=3))
    assert isinstance(w, LoraWeights) and w.num_adapters == 3 and w.layout is layout
    assert list(w.A) == [s.key for s in layout.slots]
    for s in layout.slots:
        assert w.A[s.key].shape == (3, *s.a_shape) and w.B[s.key].shape == (3, *s.b_shape)
    # any number of prompts pools to the same kind of output
    assert gen(cond(k=2, n=1)).num_adapters == 2
    assert gen.spec == {
        "name": "compact",
        "cond_dim": COND_DIM,
        "n_prompts": N_PROMPTS,
        "options": gen.opts.model_dump(mode="json"),
    }


def test_delta_w_is_zero_at_init_and_logits_are_the_base_models(tiny_qwen2):
    b = tiny_qwen2
    layout = derive_layout(b.arch, SPECS["r8-all7"])
    gen = make(layout)
    w = gen(cond(k=2))
    for s in layout.slots:
        assert torch.count_nonzero(w.B[s.key]) == 0, s.key
        assert torch.equal(w.A[s.key][0], w.A[s.key][1])  # A = A0 whatever the condition
        assert w.A[s.key].abs().min() > 0
    tok = b.tokenizer
    tok.padding_side = "left"
    ids = tok(TEXT, return_tensors="pt", padding=True)
    with torch.no_grad():
        base = b.model(**ids).logits
        with inject(b.model, w.select(0)):
            adapted = b.model(**ids).logits
    assert torch.equal(adapted, base)


def test_base_a_follows_peft_init_distribution(tiny_llama):
    """A at init is uniform on ±1/√in per slot — PEFT's kaiming_uniform_(a=√5) on lora_A — and seeded by base_a_seed."""
    b = tiny_llama
    spec = LoraSpec(rank=16, alpha=16, targets=ALL7)
    layout = derive_layout(b.arch, spec)
    w = make(layout)(cond(k=1)).select(0)
    peft_model = get_peft_model(copy.deepcopy(b.model), peft_lora_config(spec))
    peft_a = {n: p.detach() for n, p in peft_model.named_parameters() if "lora_A" in n}
    ours, theirs = [], []
    for s in layout.slots:
        bound = 1.0 / math.sqrt(s.in_features)
        a = w.A[s.key]
        assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound, s.key
        ref = next(
            v
            for n, v in peft_a.items()
            if f"layers.{s.layer}.{'self_attn' if s.module[0] in 'qkvo' else 'mlp'}.{s.module}." in n
        )
        assert ref.shape == a.shape and ref.abs().max() <= bound  # PEFT's bound is the same 1/√in
        ours.append((a / bound).flatten())
        theirs.append((ref / bound).flatten())
    u, v = torch.cat(ours), torch.cat(theirs)
    assert abs(u.mean()) < 0.02 and abs(u.var() - 1 / 3) < 0.01  # U(-1, 1): mean 0, variance 1/3
    qs = torch.linspace(0.05, 0.95, 10)
    assert torch.allclose(torch.quantile(u, qs), torch.quantile(v, qs), atol=0.03)  # same distribution as PEFT's
    # A0 comes from base_a_seed, not from the global RNG: same A0 for another torch seed, another A0 for another
    # base_a_seed
    w2 = make(layout, seed=123)(cond(k=1)).select(0)
    w3 = make(layout, base_a_seed=1)(cond(k=1)).select(0)
    key = layout.slots[0].key
    assert torch.equal(w2.A[key], w.A[key]) and not torch.equal(w3.A[key], w.A[key])


def test_deterministic_given_the_seed(tiny_qwen2):
    layout = derive_layout(tiny_qwen2.arch, SPECS["r4-qv"])
    s1, s2, s3 = (make(layout, seed=s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)


@pytest.mark.parametrize("options", [{}, {"pooling": "mean", "learn_base_a": True, "trunk_depth": 1}])
def test_gradients_reach_every_parameter(tiny_qwen2, options):
    """Step 0: the B path learns (as PEFT's B); after two steps every parameter gets a non-zero gradient."""
    b = tiny_qwen2
    gen = make(derive_layout(b.arch, SPECS["r4-qv"]), **options)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    c = cond(k=1)
    tok = b.tokenizer
    tok.padding_side = "right"
    ids = tok(TEXT[:1], return_tensors="pt")
    grads = []
    for _ in range(3):
        opt.zero_grad()
        w = gen(c)
        with inject(b.model, w.select(0)):
            loss = lm_loss(b, ids)
            loss.backward()
        grads.append({n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in gen.named_parameters()})
        opt.step()
    step0 = grads[0]
    assert all(step0[f"heads.{m}.out.weight"] for m in gen.modules_)  # B starts learning at once
    assert not any(v for n, v in step0.items() if n.startswith("trunk")), "trunk gradients need B != 0 first"
    missing = [n for n, ok in grads[2].items() if not ok]
    assert not missing, missing


def test_options_are_validated(tiny_qwen2):
    layout = derive_layout(tiny_qwen2.arch, SPECS["r4-qv"])
    for bad in (
        {"trunk_width": 0},
        {"trunk_width": True},
        {"head_hidden": 2.5},
        {"basis_dim": -1},
        {"pooling": "max"},
        {"dropout": 1.0},
        {"learn_base_a": "yes"},
        {"bogus": 1},
    ):
        with pytest.raises(ConfigError, match="compact generator options"):
            build_generator("compact", layout, COND_DIM, N_PROMPTS, **bad)
    for cd, n in ((0, 4), (8, 0), (True, 4), (8.0, 4)):
        with pytest.raises(ConfigError, match="compact generator"):
            build_generator("compact", layout, cd, n)
    gen = make(layout)
    with pytest.raises(ValueError, match=r"cond must be \[K, n_prompts, 24\]"):
        gen(torch.zeros(2, N_PROMPTS, COND_DIM + 1))
    with pytest.raises(ValueError):
        gen(torch.zeros(N_PROMPTS, COND_DIM))


def _analytic_count(layout, cond_dim, o) -> int:
    """What the module docstring says the size is."""
    w, h, p = o["trunk_width"], o["head_hidden"], o["basis_dim"]
    modules = {s.module: s for s in layout.slots}
    head_in = w + o["layer_emb_dim"] + o["module_emb_dim"]
    n = 3 * cond_dim  # attention pooling: LayerNorm + query
    n += 2 * cond_dim + cond_dim * w + w + (o["trunk_depth"] - 1) * (w * w + w) + 2 * w  # trunk
    n += len(layout.layers) * o["layer_emb_dim"] + len(modules) * o["module_emb_dim"]
    for s in modules.values():
        n += head_in * h + h + h * 2 * s.rank * p + 2 * s.rank * p + p * (s.in_features + s.out_features)
    return n


REAL = {
    "qwen2.5-1.5b r16 all-7": ("qwen2.5-1.5b", LoraSpec(rank=16, alpha=32, targets=ALL7)),
    "qwen2.5-coder-0.5b-instruct r8 all-7": ("qwen2.5-coder-0.5b-instruct", LoraSpec(rank=8, alpha=16, targets=ALL7)),
}


@pytest.mark.parametrize("case", list(REAL))
def test_size_matches_the_formula_and_is_under_a_twentieth_of_hyperconv(case):
    """Real architectures, no weights: both generators built with their parameters on the meta device."""
    backbone, spec = REAL[case]
    layout = derive_layout(architecture_of(backbone), spec)
    with meta_parameters():
        compact = build_generator("compact", layout, 384, 8)
        hyperconv = build_generator("hyperconv", layout, 384, 8)
    assert all(p.is_meta for p in compact.parameters())
    n_compact, n_hyper = num_parameters(compact), num_parameters(hyperconv)
    assert n_compact == _analytic_count(layout, 384, compact.opts.model_dump())
    assert n_compact * 20 <= n_hyper, (
        f"{case}: compact {n_compact:,} vs hyperconv {n_hyper:,} ({n_hyper / n_compact:.1f}x)"
    )
    sizes = generator_sizes(layout, 384, 8, ["compact"])
    assert sizes == {"compact": {"num_parameters": n_compact, "ratio_to_hyperconv": n_compact / n_hyper}}


def test_generator_info_cli():
    res = CliRunner().invoke(
        app,
        [
            "generator",
            "info",
            "--backbone",
            "qwen2.5-coder-0.5b-instruct",
            "--rank",
            "8",
            "--alpha",
            "16",
            "--targets",
            ALL7,
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert set(info["generators"]) == set(generator_names())
    assert (
        info["lora_params"]
        == derive_layout(
            architecture_of("qwen2.5-coder-0.5b-instruct"), REAL["qwen2.5-coder-0.5b-instruct r8 all-7"][1]
        ).num_params
    )
    assert info["generators"]["compact"]["ratio_to_hyperconv"] <= 1 / 20
    assert info["generators"]["hyperconv"]["ratio_to_hyperconv"] == 1.0
    res = CliRunner().invoke(
        app, ["generator", "info", "--backbone", "tiny-qwen2", "--generator", "compact", "--targets", "q,v"]
    )
    assert res.exit_code == 0 and "compact" in res.stdout and "parameters" in res.stdout
    res = CliRunner().invoke(app, ["generator", "info", "--backbone", "tiny-qwen2", "--generator", "nope"])
    assert (
        res.exit_code == 2
        and res.stderr.startswith("error: unknown generator 'nope'")
        and len(res.stderr.strip().splitlines()) == 1
    )
