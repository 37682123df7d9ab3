"""``deltalora lora layout``."""

# Library imports sit inside the commands: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

import typer

from .common import emit_json, run_guarded

app = typer.Typer(no_args_is_help=True)


@app.command("layout")
def layout_cmd(
    backbone: str = typer.Option(..., help="Registered backbone name, local model dir, or HF id."),
    rank: int = typer.Option(8, "--rank", "-r", help="LoRA rank r."),
    alpha: float = typer.Option(16.0, help="LoRA alpha."),
    targets: str = typer.Option("q,v", help="Comma-separated modules: q,k,v,o,gate,up,down."),
    layers: str = typer.Option(None, help="Comma-separated layer indices (default: all)."),
    rslora: bool = typer.Option(False, help="Scale by alpha/sqrt(r) instead of alpha/r."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Print every LoRA slot (layer, module, shapes, PEFT key) and the total parameter count."""
    from ..lora.for_backbone import layout_for

    layout = run_guarded(layout_for, backbone, rank=rank, alpha=alpha, targets=targets, layers=layers, rslora=rslora)
    if json_out:
        emit_json({"backbone": backbone, **layout.to_dict()})
        return
    spec = layout.spec
    typer.echo(f"backbone {backbone}: {layout.arch}")
    typer.echo(f"rank {spec.rank}, alpha {spec.alpha}, scale {layout.scale:g}, targets {','.join(spec.targets)}")
    for s in layout.slots:
        typer.echo(f"  {s.key:>16}  A{list(s.a_shape)}  B{list(s.b_shape)}  {s.num_params:>9,}")
    typer.echo(f"{len(layout.slots)} slots, {layout.num_params:,} parameters")
