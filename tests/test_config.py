import pytest
import torch
from typer.testing import CliRunner

from deltalora.cli import app
from deltalora.config import LoraSpec, RuntimeConfig, load_yaml
from deltalora.demo import DemoConfig
from deltalora.errors import ConfigError


def test_repo_demo_config_validates():
    cfg = load_yaml("configs/demo.yaml", DemoConfig)
    assert cfg.lora.targets == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert cfg.runtime.torch_dtype == torch.float32


def test_runtime_device_and_dtype():
    assert RuntimeConfig(device="cpu", dtype="bf16").torch_dtype == torch.bfloat16
    assert RuntimeConfig(device="auto").torch_device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="dtype"):
        RuntimeConfig(dtype="float8")


@pytest.mark.parametrize(
    "text, match",
    [
        ("backbone: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("backbone: x\nbackbone: y\n", "duplicate key 'backbone'"),
        ("bakbone: x\n", "bakbone: Extra inputs are not permitted"),
        ("lora:\n  rank: 0\n", "lora.rank"),
        ("lora:\n  targets: [q, nope]\n", "unknown target module 'nope'"),
    ],
)
def test_bad_yaml_names_file_and_field(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_yaml(path, DemoConfig)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml", DemoConfig)


def test_demo_cli_bad_config_exits_nonzero_without_outputs(tmp_path):
    bad = tmp_path / "demo.yaml"
    bad.write_text("num_adapters: 0\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["demo", "--config", str(bad), "--out", str(out)])
    assert res.exit_code == 2 and "num_adapters" in res.output
    assert not out.exists()


def test_lora_spec_accepts_short_and_full_names():
    assert LoraSpec(targets="v_proj,q").targets == ("q_proj", "v_proj")
