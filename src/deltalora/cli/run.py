"""``deltalora run`` (the held-out experiment), ``deltalora train`` (one generator; torchrun-ready),
``deltalora ablate`` (the one-factor-at-a-time sweep), ``deltalora compose`` (the compositionality study),
``deltalora scale`` (held-out gain against the number of training tasks) and ``deltalora report`` (re-render a
finished run's report)."""

# Library imports sit inside the commands: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from .common import emit_json, run_guarded


def run_cmd(
    config: Path = typer.Option(..., "--config", help="Run config (YAML), e.g. configs/quick.yaml."),
    out: Path = typer.Option(None, "--out", help="Run directory (default: runs/<name>). Rerunning resumes."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config key, e.g. --set train.delta_loss=specific_cosine (repeatable)."
    ),
) -> None:
    """Zoo → teacher Δ → weight-only and Δ-augmented generators → held-out adapters → eval → report.md."""
    from ..experiment.jobs import run_from_config

    command = "deltalora " + shlex.join(sys.argv[1:])
    typer.echo(f"report: {run_guarded(run_from_config, config, out, overrides, progress=not quiet, command=command)}")


def compose_cmd(
    config: Path = typer.Option(..., "--config", help="Compose config (YAML), e.g. configs/compose.yaml."),
    out: Path = typer.Option(None, "--out", help="Study directory (default: runs/<name>). Rerunning resumes."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config key, e.g. --set eval.limit=50 (repeatable)."
    ),
) -> None:
    """Mixed-task teachers: Δ algebra (Δ_mix vs Δ₁+Δ₂) and interference of composed adapters → compositionality.md."""
    from ..experiment.jobs import compose_from_config

    command = "deltalora " + shlex.join(sys.argv[1:])
    typer.echo(
        f"report: {run_guarded(compose_from_config, config, out, overrides, progress=not quiet, command=command)}"
    )


def scale_cmd(
    config: Path = typer.Option(..., "--config", help="Scaling config (YAML), e.g. configs/scaling.yaml."),
    out: Path = typer.Option(None, "--out", help="Study directory (default: runs/<name>). Rerunning resumes."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config key, e.g. --set run_folds=[0,1] (repeatable)."
    ),
) -> None:
    """k folds over tasks: held-out gain against the number of training tasks → scaling.md (curve with error bars)."""
    from ..experiment.jobs import scale_from_config

    command = "deltalora " + shlex.join(sys.argv[1:])
    typer.echo(f"report: {run_guarded(scale_from_config, config, out, overrides, progress=not quiet, command=command)}")


def report_cmd(
    run_dir: Path = typer.Argument(
        ..., help="A directory that `deltalora run` or `deltalora scale` finished (holds results.json)."
    ),
) -> None:
    """Re-render report.md (scaling.md for a scale study) and its figures from results.json; recomputes nothing."""
    from ..experiment import rerender

    typer.echo(f"report: {run_guarded(rerender, run_dir)}")


def train_cmd(
    config: Path = typer.Option(..., "--config", help="Run config (YAML): its zoo, held-out tasks and train section."),
    arm: str = typer.Option(
        "delta", "--arm", help="delta (λ from the config), weight_only (λ = 0) or a name under the config's compare:."
    ),
    seed: int = typer.Option(0, "--seed", help="Generator seed."),
    out: Path = typer.Option(
        ..., "--out", help="Training directory (log.jsonl, trainer state, generator.safetensors)."
    ),
    run_dir: Path = typer.Option(None, "--run-dir", help="Where the zoo / Δ cache live (default: runs/<name>)."),
    json_out: bool = typer.Option(False, "--json", help="Print the final log record as JSON."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config key, e.g. --set train.steps=600 (repeatable)."
    ),
) -> None:
    """Train one generator. Under `torchrun --nproc-per-node N deltalora train ...` it runs DDP (generator only)."""
    from ..experiment.jobs import train_variant

    rank, res = run_guarded(train_variant, config, out, arm, seed=seed, run_dir=run_dir, overrides=overrides)
    if rank != 0:
        return
    if json_out:
        emit_json(
            {"generator": str(res.generator), "steps": res.steps, "resumed_from": res.resumed_from, "last": res.last}
        )
    else:
        typer.echo(f"generator: {res.generator} ({res.steps} steps, resumed from {res.resumed_from})")


def ablate_cmd(
    config: Path = typer.Option(..., "--config", help="Ablation config (YAML): the run to centre on and the grid."),
    out: Path = typer.Option(Path("runs/ablate"), "--out", help="Output directory (ablation.md, ablation.json)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Sweep λ, probe set, representation and Δ loss one at a time; one results table."""
    from ..experiment.jobs import ablate_from_config

    typer.echo(f"table: {run_guarded(ablate_from_config, config, out, progress=not quiet)}")
