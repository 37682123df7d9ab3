"""``deltalora generator info``: parameter counts of the registered generators for one layout."""

# Library imports sit inside the commands: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

import typer

from .common import emit_json, run_guarded

app = typer.Typer(no_args_is_help=True)


@app.command("info")
def info_cmd(
    generator: list[str] = typer.Option(
        [], "--generator", help="Generator name (repeatable; default: every registered one)."
    ),
    backbone: str = typer.Option(
        ..., help="Registered backbone name, local model dir, or HF id (only its config is read)."
    ),
    rank: int = typer.Option(8, "--rank", "-r", help="LoRA rank r."),
    alpha: float = typer.Option(16.0, help="LoRA alpha."),
    targets: str = typer.Option("q,v", help="Comma-separated modules: q,k,v,o,gate,up,down."),
    layers: str = typer.Option(None, help="Comma-separated layer indices (default: all)."),
    cond_dim: int = typer.Option(384, help="Width of one condition embedding (minilm: 384)."),
    n_prompts: int = typer.Option(8, help="Condition prompts per adapter."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Parameter count of each generator for a backbone + LoRA config, and its ratio to hyperconv (built on the meta
    device: no memory).
    """
    from ..generators.sizes import generator_info

    info = run_guarded(
        generator_info,
        backbone,
        generator or None,
        rank=rank,
        alpha=alpha,
        targets=targets,
        layers=layers,
        cond_dim=cond_dim,
        n_prompts=n_prompts,
    )
    if json_out:
        emit_json(info)
        return
    lora = info["lora"]
    typer.echo(
        f"backbone {backbone}, rank {lora['rank']}, targets {','.join(lora['targets'])}: {info['num_slots']} slots, "
        f"{info['lora_params']:,} LoRA parameters; cond_dim {cond_dim}, n_prompts {n_prompts}"
    )
    for name, g in info["generators"].items():
        ratio = g["ratio_to_hyperconv"]
        if g["num_parameters"] is None:
            typer.echo(f"  {name:>10}  {'n/a':>15}  ({g.get('note', 'size depends on the teacher library')})")
            continue
        typer.echo(
            f"  {name:>10}  {g['num_parameters']:>15,} parameters"
            + ("" if ratio is None else f"  ({ratio:.4g} x hyperconv)")
        )
