import json

import pytest
from typer.testing import CliRunner

from deltalora.backbones import architecture_of
from deltalora.cli import app
from deltalora.config import LoraSpec
from deltalora.errors import ConfigError
from deltalora.lora import derive_layout

ALL7 = "q,k,v,o,gate,up,down"


def test_dnd_qwen25_15b_count():
    layout = derive_layout(architecture_of("qwen2.5-1.5b"), LoraSpec(rank=16, alpha=32, targets=ALL7))
    assert layout.num_params == 18_464_768
    assert len(layout.slots) == 28 * 7
    assert layout.scale == 2.0


def test_coder_05b_r8_count():
    layout = derive_layout(architecture_of("qwen2.5-coder-0.5b-instruct"), LoraSpec(rank=8, alpha=16, targets=ALL7))
    assert layout.num_params == 4_399_104


@pytest.mark.parametrize("backbone", ["tiny-qwen2", "tiny-llama"])
@pytest.mark.parametrize("targets", ["q,v", ALL7, "o,down"])
@pytest.mark.parametrize("rank", [4, 8])
def test_layout_matches_real_modules(backbone, targets, rank, request):
    """Derived shapes and paths equal the nn.Linear modules of an instantiated model."""
    b = request.getfixturevalue(backbone.replace("-", "_"))
    layout = derive_layout(b.arch, LoraSpec(rank=rank, alpha=2 * rank, targets=targets))
    modules = dict(b.model.named_modules())
    n_targets = len(targets.split(","))
    assert len(layout.slots) == b.config.num_hidden_layers * n_targets
    for slot in layout.slots:
        lin = modules[slot.path]
        assert (lin.in_features, lin.out_features) == (slot.in_features, slot.out_features)
        assert slot.a_shape == (rank, lin.in_features) and slot.b_shape == (lin.out_features, rank)
        assert slot.peft_key_a == f"base_model.model.{slot.path}.lora_A.weight"


def test_layer_subset_and_order():
    arch = architecture_of("qwen2.5-coder-0.5b-instruct")
    layout = derive_layout(arch, LoraSpec(rank=4, targets="v,q,down", layers=[3, 1]))
    assert [s.key for s in layout.slots] == [
        "1.q_proj",
        "1.v_proj",
        "1.down_proj",
        "3.q_proj",
        "3.v_proj",
        "3.down_proj",
    ]
    assert [s.index for s in layout.slots] == list(range(6))


def test_rslora_scale():
    assert LoraSpec(rank=16, alpha=32, rslora=True).scale == pytest.approx(8.0)
    assert LoraSpec(rank=16, alpha=32).scale == 2.0


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown target module"):
        LoraSpec(targets="q,x")
    with pytest.raises(ConfigError, match="do not exist"):
        derive_layout(architecture_of("tiny-qwen2"), LoraSpec(layers=[0, 5]))
    with pytest.raises(ConfigError, match="not a supported decoder family"):
        derive_layout({"model_type": "gpt2"}, LoraSpec())


def test_cli_layout_json():
    res = CliRunner().invoke(
        app,
        ["lora", "layout", "--backbone", "qwen2.5-1.5b", "--rank", "16", "--alpha", "32", "--targets", ALL7, "--json"],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["num_params"] == 18_464_768
    assert data["slots"][0]["peft_key_a"] == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert data["slots"][-1]["key"] == "27.down_proj"


def test_cli_layout_bad_target_is_one_line_error():
    res = CliRunner().invoke(app, ["lora", "layout", "--backbone", "tiny-qwen2", "--targets", "q,zz"])
    assert res.exit_code == 2
    assert "unknown target module 'zz'" in res.output
