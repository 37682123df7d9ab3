"""``deltalora adapter inspect``."""

# Library imports sit inside the commands: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

import typer

from .common import emit_json, run_guarded

app = typer.Typer(no_args_is_help=True)


def _fmt(x) -> str:
    return "?" if x is None else f"{x:.4g}"


@app.command("inspect")
def inspect_cmd(
    directory: str = typer.Argument(
        ..., metavar="DIR", help="PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."
    ),
    backbone: str = typer.Option(
        None, help="Check shapes against this backbone: registered name, local model dir, or HF id."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Validate an adapter and summarise it (rank, targets, parameters, norms). Exit 1 when it is invalid."""
    from ..lora.for_backbone import inspect_adapter_for

    info = run_guarded(inspect_adapter_for, directory, backbone)
    if json_out:
        emit_json({"backbone": backbone, **info})
    else:
        state = "valid" if info["valid"] else "INVALID"
        typer.echo(f"adapter {info['path']}: {state}" + (f" for backbone {backbone}" if backbone else ""))
        if info["rank"] is not None:
            rs = ", rsLoRA" if info["rslora"] else ""
            typer.echo(f"rank {info['rank']}, alpha {_fmt(info['alpha'])}, scale {_fmt(info['scale'])}{rs}")
        if info["targets"] is not None:
            layers = ",".join(map(str, info["layers"])) if info["layers"] else "?"
            targets = info["targets"]
            targets = ",".join(map(str, targets)) if isinstance(targets, list) else repr(targets)
            typer.echo(f"targets {targets}, layers {layers}")
        if info["num_slots"] is not None:
            typer.echo(f"{info['num_slots']} slots, {info['num_params']:,} parameters, dtype {info['dtype']}")
        for module, n in (info["norms"] or {}).items():
            typer.echo(
                f"  {module:>10}  |A|_F {_fmt(n['A_fro'])}  |B|_F {_fmt(n['B_fro'])}  mean |dW|_F "
                f"{_fmt(n['delta_w_fro_mean'])}"
            )
        for problem in info["problems"]:
            typer.echo(f"problem: {problem}", err=True)
    if not info["valid"]:
        raise typer.Exit(1)
