"""``deltalora deltas compute`` (and ``probes``): teacher Δ extraction through the content-addressed cache."""

# Library imports sit inside the commands: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

import logging

import typer

from .common import emit_json, run_guarded

app = typer.Typer(no_args_is_help=True)


@app.command("compute")
def compute_cmd(
    backbone: str = typer.Option(..., help="Backbone: registered name, local model dir, or HF id."),
    zoo: str = typer.Option(None, help="Zoo manifest (manifest.jsonl or its directory): Mode A over its adapters."),
    adapter: list[str] = typer.Option(None, "--adapter", help="PEFT LoRA directory (Mode A); repeat for several."),
    model: list[str] = typer.Option(
        None, "--model", help="Fine-tuned model directory of the same architecture (Mode B); repeat for several."
    ),
    probes: str = typer.Option(
        "generic5",
        help=(
            "Probe set name (see `deltalora deltas probes`), a .txt/.jsonl probe file, or task:train:N — each "
            "teacher's N own-task train prompts (needs --zoo)."
        ),
    ),
    zoo_config: str = typer.Option(
        None, "--zoo-config", help="The zoo's YAML, for task probes when the zoo read tasks from user files."
    ),
    repr_: str = typer.Option(
        "last_token",
        "--repr",
        help=r"last_token | mean | layers:\[i,j,..]\[:concat|:avg]\[:last_token|:mean] (hidden_states indices).",
    ),
    batch_adapters: int = typer.Option(8, "--batch-adapters", min=1, help="Adapters per forward (K)."),
    shard: str = typer.Option(None, help="i/n: process every n-th source (sorted by id) starting at i (0-based)."),
    cache: str = typer.Option(
        None, help="Cache directory (default: $DELTALORA_HOME/deltas, i.e. ~/.cache/deltalora/deltas)."
    ),
    device: str = typer.Option("auto", help="Device (auto, cpu, cuda, ...)."),
    dtype: str = typer.Option(
        "float32",
        help=(
            "Compute dtype; Δ supervision wants float32 (bf16 adds an L2 error of ~2.4 to Δ; "
            "results/delta_precision.md)."
        ),
    ),
    backend: str = typer.Option(
        "local",
        help=(
            r"local: this process; ray: a Ray Data actor pool (needs `pip install 'deltalora\[ray]'`; uses "
            r"RAY_ADDRESS if set)."
        ),
    ),
    ray_actors: int = typer.Option(
        2,
        "--ray-actors",
        min=1,
        help="With --backend ray: actors, each loading the backbone once (1 CPU, or 1 GPU for a CUDA backbone, each).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Compute Δ = v(M) − v(B) for adapters or models; cache hits are skipped (resumable, idempotent)."""
    from ..deltas.jobs import compute_deltas_for

    if not json_out:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_guarded(
        compute_deltas_for,
        backbone,
        zoo=zoo,
        adapters=adapter or (),
        models=model or (),
        probes=probes,
        representation=repr_,
        batch_adapters=batch_adapters,
        shard=shard,
        cache=cache,
        device=device,
        dtype=dtype,
        backend=backend,
        ray_actors=ray_actors,
        progress=not json_out,
        zoo_config=zoo_config,
    )
    if json_out:
        emit_json(report.to_dict())
    else:
        c = report.counts()
        typer.echo(
            f"Δ ({report.representation}, probes {report.probes}) on {report.backbone}: {c['computed']} computed, "
            f"{c['cached']} cached, {c['broken']} broken in {report.seconds:.1f}s; cache {report.cache_dir}"
        )
        for b in report.broken:
            typer.echo(f"broken: {b.id}: {b.error}", err=True)


@app.command("analyze")
def analyze_cmd(
    backbone: str = typer.Option(..., help="Backbone the zoo was trained on."),
    zoo: str = typer.Option(..., help="Zoo manifest (manifest.jsonl or its directory); families come from it."),
    probes: str = typer.Option("generic5", help="Probe set name or file, or task:train:N (each teacher's own task)."),
    zoo_config: str = typer.Option(
        None, "--zoo-config", help="The zoo's YAML, for task probes when the zoo read tasks from user files."
    ),
    repr_: str = typer.Option("last_token", "--repr", help="Representation (see `compute`)."),
    batch_adapters: int = typer.Option(8, "--batch-adapters", min=1, help="Adapters per forward for missing Δ."),
    cache: str = typer.Option(
        None, help="Cache directory (default: $DELTALORA_HOME/deltas, i.e. ~/.cache/deltalora/deltas)."
    ),
    out: str = typer.Option(None, help="Write the t-SNE PNG here (needs scikit-learn and matplotlib)."),
    no_weights: bool = typer.Option(False, "--no-weights", help="Skip the flattened-weights baseline."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Silhouette score of Δ by task family (cosine distance) next to flattened adapter weights', and a t-SNE PNG."""
    from ..deltas.jobs import analyze_zoo

    result = run_guarded(
        analyze_zoo,
        backbone,
        zoo,
        probes=probes,
        representation=repr_,
        batch_adapters=batch_adapters,
        cache=cache,
        png=out,
        weights=not no_weights,
        progress=not json_out,
        zoo_config=zoo_config,
    )
    if json_out:
        emit_json(result)
        return
    typer.echo(
        f"{result['adapters']} adapters in {len(result['families'])} families: silhouette (cosine) of Δ "
        f"{result['silhouette_delta']:.3f}"
        + (f", of flattened weights {result['silhouette_weights']:.3f}" if "silhouette_weights" in result else "")
        + f"; of task-specific Δ (mean Δ projected out) {result['silhouette_delta_specific']:.3f}"
    )
    bt = result["by_task"]
    if "note" in bt:
        typer.echo(f"by task: skipped, {bt['note']}")
    else:
        typer.echo(
            f"by task ({bt['adapters']} runs of {bt['tasks']} tasks, last checkpoints): Δ "
            f"{bt['silhouette_delta']:.3f}, "
            f"task-specific Δ {bt['silhouette_delta_specific']:.3f}"
            + (f", flattened weights {bt['silhouette_weights']:.3f}" if "silhouette_weights" in bt else "")
        )
    if result.get("tsne_png"):
        typer.echo(f"t-SNE: {result['tsne_png']}")
    elif result.get("note"):
        typer.echo(result["note"], err=True)


@app.command("probes")
def probes_cmd(
    name: str = typer.Argument(None, help="Show the texts of this probe set (name or file)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List the registered probe sets, or show one."""
    from ..deltas.listing import probe_sets

    sets = run_guarded(probe_sets, name)
    if json_out:
        emit_json(
            [
                {"name": p.name, "sha256": p.sha256, "count": len(p), **({"texts": list(p.texts)} if name else {})}
                for p in sets
            ]
        )
        return
    for p in sets:
        typer.echo(f"{p.name}: {len(p)} probes, sha256 {p.sha256[:16]}")
        if name:
            for t in p.texts:
                typer.echo("  " + repr(t))
