"""``deltalora zoo build | list | import | multitask``."""

# Library imports sit inside the commands: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

from pathlib import Path

import typer

from .common import emit_json, run_guarded

app = typer.Typer(no_args_is_help=True)


def _print_summary(s: dict) -> None:
    typer.echo(f"{'task':<40} {'family':<12} {'adapters':>8} {'s / run':>8}  seeds / steps")
    for r in s["tasks"]:
        sec = "—" if r["seconds_per_run"] is None else f"{r['seconds_per_run']:.0f}"
        typer.echo(f"{r['task']:<40} {r['family']:<12} {r['adapters']:>8} {sec:>8}  {r['seeds']} / {r['steps']}")
    fam = ", ".join(f"{k} {v}" for k, v in s["families"].items())
    cost = f"; training {s['train_seconds'] / 3600:.2f} h in all" if s["train_seconds"] else ""
    typer.echo(f"{s['adapters']} adapters, {len(s['tasks'])} tasks ({fam}){cost}")


@app.command("build")
def build_cmd(
    config: Path = typer.Option(..., "--config", help="Zoo config YAML (see configs/zoo/)."),
    out: Path = typer.Option(None, "--out", help="Zoo directory (default: runs/zoo/<config stem>)."),
    shard: str = typer.Option(None, "--shard", help="i/n: build every n-th job starting at i (0-based)."),
    reuse: list[Path] = typer.Option(
        None,
        "--reuse",
        help="Another zoo dir: copy its finished jobs that have the same recipe instead of training (repeatable).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config key, e.g. --set teacher.precision=float32 (repeatable)."
    ),
) -> None:
    """Train one LoRA per (task, seed) and mixed pair, keep tail checkpoints, list them in manifest.jsonl
    (resumable)."""
    from ..zoo.summary import build_from_config

    s = run_guarded(
        build_from_config, config, out, shard=shard, reuse=reuse or (), overrides=overrides, progress=not json_out
    )
    if json_out:
        emit_json(s)
        return
    _print_summary(s)
    typer.echo(f"zoo {s['zoo']} (shard {s['shard']}), {s['seconds']} s")


@app.command("list")
def list_cmd(
    zoo: Path = typer.Argument(..., help="Zoo directory (or its manifest.jsonl)."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash every adapter against the manifest."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Adapters of a zoo per task and family."""
    from ..zoo.summary import list_zoo

    s = run_guarded(list_zoo, zoo, verify=verify)
    if json_out:
        emit_json(s)
        return
    _print_summary(s)


@app.command("import")
def import_cmd(
    dnd: Path = typer.Option(
        ..., "--dnd", help="DnD's data/<domain> folder (one <dataset>/N.safetensors folder per dataset)."
    ),
    out: Path = typer.Option(..., "--out", help="Zoo directory to import into."),
    backbone: str = typer.Option(None, "--backbone", help="Validate against this backbone's layout (else inferred)."),
    prompts: Path = typer.Option(
        None, "--prompts", help="Folder of <dataset>_train.json prompt files (DnD's prepare/data)."
    ),
    family: list[str] = typer.Option([], "--family", help="DATASET=FAMILY (repeatable); default family 'dnd'."),
    alpha: float = typer.Option(None, "--alpha", help="LoRA alpha (default 2*rank, LLaMA-Factory's default)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Import Drag-and-Drop-LLMs' released teacher checkpoints (N.safetensors per dataset) as PEFT dirs + manifest."""
    from ..zoo.summary import import_from_dnd

    s = run_guarded(
        import_from_dnd,
        dnd,
        out,
        backbone=backbone,
        families=family,
        prompts=prompts,
        alpha=alpha,
        progress=not json_out,
    )
    if json_out:
        emit_json(s)
        return
    _print_summary(s)


@app.command("multitask")
def multitask_cmd(
    config: Path = typer.Option(..., "--config", help="The zoo's config YAML (the one it was built with)."),
    zoo: Path = typer.Option(..., "--zoo", help="Zoo directory; the LoRA is cached under <zoo>/multitask/."),
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated training tasks, e.g. a,b,c (any order)."),
    steps: int = typer.Option(None, "--steps", help="Training steps (default: teacher.steps x number of tasks)."),
    seed: int = typer.Option(0, "--seed", help="Zoo seed whose teachers' train items are used."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    overrides: list[str] = typer.Option(
        [], "--set", help="A config override the zoo was built with, e.g. --set teacher.precision=float32."
    ),
) -> None:
    """One LoRA trained with the teachers' recipe on the union of TASKS' train items (the multi-task baseline);
    cached in the zoo. Rerun after a kill: it resumes from its last saved step."""
    from ..zoo.multitask import multitask_from_config

    s = run_guarded(
        multitask_from_config,
        config,
        zoo,
        tasks,
        steps=steps,
        seed=seed,
        overrides=overrides,
        progress=not json_out,
    )
    if json_out:
        emit_json(s)
        return
    b = s["budget"]
    how = "cached" if s["cached"] else f"trained in {s['train_seconds']} s"
    typer.echo(s["path"])
    typer.echo(
        f"{len(s['tasks'])} tasks ({', '.join(s['tasks'])}), seed {s['seed']}: {b['steps']} steps "
        f"({b['steps_per_task']:g} per task) x batch {b['batch_size']} = {b['examples']} examples, "
        f"lr {b['lr']:g}, warm-up {b['warmup_steps']}, {s['precision']}; {how}"
    )
