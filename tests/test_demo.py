import json

from typer.testing import CliRunner

from deltalora.cli import app


def test_demo_runs_end_to_end_on_tiny(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--backbone", "tiny-qwen2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adapter_inspect"]["valid"] is True
    assert summary["injection_vs_peft_relative_error"] < 1e-5
    assert summary["mean_delta_norm"] > 0
    assert "foundation demo" in (out / "report.md").read_text()
    assert json.loads((out / "config.json").read_text())["backbone"] == "tiny-qwen2"
