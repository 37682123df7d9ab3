"""``deltalora models list|fetch``."""

# Library imports sit inside the commands: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

import typer

from .common import emit_json, run_guarded

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Registered backbones, their architecture, and whether they are cached."""
    from ..backbones.inventory import list_backbones

    rows = list_backbones()
    if json_out:
        emit_json(rows)
        return
    for r in rows:
        a = r["architecture"]
        state = "ready" if r["cached"] else "not fetched"
        typer.echo(
            f"{r['name']:<30} {r['kind']:<9} {a['model_type']:<6} hidden {a['hidden_size']:<5} layers "
            f"{a['num_hidden_layers']:<3} {state}"
        )


@app.command("fetch")
def fetch_cmd(
    name: str = typer.Argument(..., help="Registered backbone name."),
    source: str = typer.Option(None, help="For hub backbones: a local directory holding the weights."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Download, verify and cache a backbone so later loads are offline and fast. Idempotent."""
    from ..backbones.inventory import fetch_backbone

    info = run_guarded(fetch_backbone, name, source=source, progress=not json_out)
    if json_out:
        emit_json(info)
    else:
        state = "already cached" if info["already_cached"] else f"fetched in {info['fetch_seconds']:.1f}s"
        typer.echo(f"{name}: {state}; loads in {info['load_seconds']:.2f}s from {info['path']}")
