from typer.testing import CliRunner

from deltalora.cli import app


def test_demo_runs_the_main_job_end_to_end_on_tiny(tmp_path, deltalora_home):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--config", "tests/fixtures/run/tiny.yaml", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    assert "Δ-augmented generator" in report and "weight-only generator" in report
    assert (out / "figures" / "accuracy.png").exists()
    assert (out / "tsne_input.npz").is_file()
    # `deltalora report` re-renders the same report from what the run left on disk, recomputing nothing
    (out / "report.md").write_text("stale")
    res = CliRunner().invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "report.md").read_text() == report
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code != 0 and "results.json" in res.output
