"""``deltalora merge``: PEFT adapter directories in, one merged PEFT adapter out."""

# Library imports sit inside the command: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

from pathlib import Path

import typer

from .common import emit_json, run_guarded


def _weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        typer.echo(f"error: --weights must be comma-separated numbers, got {text!r}", err=True)
        raise typer.Exit(2) from None


def merge_cmd(
    adapters: list[Path] = typer.Argument(..., metavar="ADAPTER...", help="PEFT adapter directories to merge."),
    out: Path = typer.Option(..., "--out", help="Adapter directory to write (a new directory or a previous adapter)."),
    method: str = typer.Option(
        "avg",
        "--method",
        help="avg (exact mean ΔW, rank Σr), svd (mean ΔW cut to rank r), ties, dare, dare_ties (on ΔW, then rank r).",
    ),
    weights: str = typer.Option(
        None,
        "--weights",
        help="Comma-separated relative weights, one per adapter (normalised to sum 1; default equal).",
    ),
    rank: int = typer.Option(None, "--rank", help="Output rank of svd/ties/dare merges (default: the largest input)."),
    density: float = typer.Option(0.5, "--density", help="TIES / DARE: share of ΔW entries kept."),
    majority_sign: str = typer.Option("total", "--majority-sign", help="TIES sign election: total or frequency."),
    seed: int = typer.Option(0, "--seed", help="DARE's random drop."),
    backbone: str = typer.Option(None, "--backbone", help="Check every adapter against this backbone's shapes."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Merge adapters into one PEFT adapter that stock PEFT loads; prints each input with its weight."""
    from ..backbones import architecture_of
    from ..lora.merge import merge_adapter_dirs

    arch = run_guarded(architecture_of, backbone) if backbone else None
    report = run_guarded(
        merge_adapter_dirs,
        adapters,
        out,
        _weights(weights),
        method,
        rank=rank,
        density=density,
        majority_sign=majority_sign,
        seed=seed,
        arch=arch,
    )
    if json_out:
        emit_json(report)
        return
    typer.echo(
        f"wrote {report['out']}: {report['method']} merge, rank {report['rank']}, {report['num_params']:,} "
        "LoRA parameters"
    )
    typer.echo(f"  {report['normalisation']} (= {report['equals']})")
    for item in report["inputs"]:
        typer.echo(f"  {item['weight']:.4f}  {item['path']}")
