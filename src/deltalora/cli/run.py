"""``deltalora run`` (the held-out experiment), ``deltalora train`` (one generator; torchrun-ready),
``deltalora ablate`` (the one-factor-at-a-time sweep) and ``deltalora report`` (re-render a finished run's report)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import typer

from .common import emit_json, run_guarded


def run_cmd(
    config: Path = typer.Option(..., "--config", help="Run config (YAML), e.g. configs/quick.yaml."),
    out: Path = typer.Option(None, "--out", help="Run directory (default: runs/<name>). Rerunning resumes."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set train.delta_loss=specific_cosine (repeatable)."),
) -> None:
    """Zoo → teacher Δ → weight-only and Δ-augmented generators → held-out adapters → eval → report.md."""

    def go() -> Path:
        from ..config import parse_overrides
        from ..experiment import load_run_config, run_experiment

        cfg = load_run_config(config, parse_overrides(overrides))
        dest = out or Path("runs") / cfg.name
        return run_experiment(cfg, dest, progress=not quiet, command="deltalora " + shlex.join(sys.argv[1:]))

    typer.echo(f"report: {run_guarded(go)}")


def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory that `deltalora run` finished (holds results.json)."),
) -> None:
    """Re-render report.md and its figures from a finished run's results.json and logs; recomputes nothing."""

    def go() -> Path:
        from ..experiment import rerender

        return rerender(run_dir)

    typer.echo(f"report: {run_guarded(go)}")


def _init_distributed():
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: join the group (gloo on CPU, nccl on GPUs)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def train_cmd(
    config: Path = typer.Option(..., "--config", help="Run config (YAML): its zoo, held-out tasks and train section."),
    arm: str = typer.Option("delta", "--arm", help="delta (λ from the config) or weight_only (λ = 0)."),
    seed: int = typer.Option(0, "--seed", help="Generator seed."),
    out: Path = typer.Option(..., "--out", help="Training directory (log.jsonl, trainer state, generator.safetensors)."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Where the zoo / Δ cache live (default: runs/<name>)."),
    json_out: bool = typer.Option(False, "--json", help="Print the final log record as JSON."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set train.steps=600 (repeatable)."),
) -> None:
    """Train one generator. Under `torchrun --nproc-per-node N deltalora train ...` it runs DDP (generator only)."""

    def go():
        import torch.distributed as dist

        from ..errors import ConfigError
        from ..experiment import load_run_config
        from ..experiment.run import VARIANTS as ARMS, prepare  # --arm names a generator variant
        from ..training import train_generator

        if arm not in ARMS:
            raise ConfigError(f"--arm {arm!r}: use one of {', '.join(ARMS)}")
        from ..config import parse_overrides

        cfg = load_run_config(config, parse_overrides(overrides))
        _init_distributed()
        rank = dist.get_rank() if dist.is_initialized() else 0
        dest = run_dir or Path("runs") / cfg.name
        if rank == 0:
            ctx = prepare(cfg, dest, progress=True)  # builds what is missing, once
        if dist.is_initialized():
            dist.barrier()
            if rank != 0:
                ctx = prepare(cfg, dest, progress=False)  # everything is cached by now
        try:
            res = train_generator(cfg.arm_config(arm, seed), ctx.train_set, ctx.backbone, out, progress=rank == 0,
                                  meta={"encoder": cfg.train.encoder, "heldout_tasks": ctx.heldout})
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        return rank, res

    rank, res = run_guarded(go)
    if rank != 0:
        return
    if json_out:
        emit_json({"generator": str(res.generator), "steps": res.steps, "resumed_from": res.resumed_from, "last": res.last})
    else:
        typer.echo(f"generator: {res.generator} ({res.steps} steps, resumed from {res.resumed_from})")


def ablate_cmd(
    config: Path = typer.Option(..., "--config", help="Ablation config (YAML): the run to centre on and the grid."),
    out: Path = typer.Option(Path("runs/ablate"), "--out", help="Output directory (ablation.md, ablation.json)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Sweep λ, probe set, representation and Δ loss one at a time; one results table."""

    def go() -> Path:
        from ..experiment import load_ablation_config
        from ..experiment.ablate import run_ablation

        return run_ablation(load_ablation_config(config), out, progress=not quiet)

    typer.echo(f"table: {run_guarded(go)}")
