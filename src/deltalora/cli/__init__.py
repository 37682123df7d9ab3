"""``deltalora`` — a thin typer layer over the Python API. Each verb group lives in its own module."""

from __future__ import annotations

from pathlib import Path

import typer

from . import adapter, deltas, evaluate, generate, generator, lora, merge, models, retrieve, run, tasks, zoo

app = typer.Typer(
    name="deltalora",
    help="Train LoRA generators supervised by behavioural matching (delta activations).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models", help="List and fetch backbones.")
app.add_typer(lora.app, name="lora", help="LoRA layouts derived from backbone configs.")
app.add_typer(adapter.app, name="adapter", help="Inspect and validate PEFT adapter directories.")
app.add_typer(tasks.app, name="tasks", help="List, show and fetch the task suite.")
app.command("eval")(evaluate.eval_cmd)
app.add_typer(zoo.app, name="zoo", help="Build, list and import teacher zoos (PEFT dirs + manifest).")
app.add_typer(deltas.app, name="deltas", help="Delta activations: probe sets, extraction, cache, clustering.")
app.add_typer(generator.app, name="generator", help="Generators: parameter counts for a backbone + LoRA config.")
app.command("generate")(generate.generate_cmd)
app.command("merge")(merge.merge_cmd)
app.command("retrieve")(retrieve.retrieve_cmd)
app.command("run")(run.run_cmd)
app.command("train")(run.train_cmd)
app.command("ablate")(run.ablate_cmd)
app.command("compose")(run.compose_cmd)
app.command("scale")(run.scale_cmd)
app.command("report")(run.report_cmd)


@app.command()
def demo(
    config: str = typer.Option("configs/quick.yaml", help="Run config (YAML) of the main job."),
    out: str = typer.Option("runs/demo", help="Run directory (report.md, results.json, figures/). Rerunning resumes."),
) -> None:
    """The main job on the embedded default backbone: `deltalora run` with the quick preset."""
    run.run_cmd(config=Path(config), out=Path(out), quiet=False, overrides=[])


def main() -> None:  # pragma: no cover - entry point
    app()
