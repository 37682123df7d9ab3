"""``deltalora`` — a thin typer layer over the Python API. Each verb group lives in its own module."""

from __future__ import annotations

import typer

from . import adapter, lora, models
from .common import run_guarded

app = typer.Typer(
    name="deltalora",
    help="Train LoRA generators supervised by behavioural matching (delta activations).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models", help="List and fetch backbones.")
app.add_typer(lora.app, name="lora", help="LoRA layouts derived from backbone configs.")
app.add_typer(adapter.app, name="adapter", help="Inspect and validate PEFT adapter directories.")


@app.command()
def demo(
    out: str = typer.Option("runs/demo", help="Run directory for the report."),
    backbone: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="Backbone to run on."),
) -> None:
    """The main job. Until the training issue lands this runs the foundation demo (see README)."""
    from ..demo import foundation_demo

    run_guarded(lambda: foundation_demo(out, backbone))


def main() -> None:  # pragma: no cover - entry point
    app()
