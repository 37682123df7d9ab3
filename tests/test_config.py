import pytest
import torch
from typer.testing import CliRunner

from deltalora.cli import app
from deltalora.config import LoraSpec, RuntimeConfig, StrictModel, load_yaml
from deltalora.errors import ConfigError


class DemoConfig(StrictModel):
    """A small config model to exercise load_yaml's error reporting."""

    backbone: str = "tiny-qwen2"
    lora: LoraSpec = LoraSpec()
    num_adapters: int = 1


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
    bad.write_text("zoo: zoo.yaml\nheldout: [a]\ntrain: {lam: {target: 1.0}, steps: 0}\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["demo", "--config", str(bad), "--out", str(out)])
    assert res.exit_code == 2 and "train.steps" in res.output and str(bad) in res.output
    assert not out.exists()


def test_lora_spec_accepts_short_and_full_names():
    assert LoraSpec(targets="v_proj,q").targets == ("q_proj", "v_proj")
