"""``deltalora generate``: a task's prompts in, a PEFT adapter directory out."""

# Library imports sit inside the commands: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

from pathlib import Path

import typer

from .common import emit_json, run_guarded


def generate_cmd(
    generator: Path = typer.Option(
        ..., "--generator", help="Generator checkpoint (.safetensors written by save_generator / training)."
    ),
    prompts: Path = typer.Option(
        ...,
        "--prompts",
        help='Prompt file: JSONL {"prompt"[, "response"|"answer"]} or DnD JSON [{prompt, response, system}].',
    ),
    out: Path = typer.Option(
        ..., "--out", help="Adapter directory to write (PEFT format; a new directory or a previous adapter)."
    ),
    n_prompts: int = typer.Option(None, "--n-prompts", help="Condition prompts to sample (default: the checkpoint's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt sampling."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Sample condition prompts, encode them, run the generator and write a PEFT adapter that stock PEFT loads."""
    from ..config import RuntimeConfig, model_validate_or_raise
    from ..generators.inference import generate_adapter

    runtime = run_guarded(
        model_validate_or_raise, RuntimeConfig, {"device": device, "dtype": "float32"}, "runtime options"
    )
    report = run_guarded(generate_adapter, generator, prompts, out, n_prompts=n_prompts, seed=seed, runtime=runtime)
    if json_out:
        emit_json(report)
        return
    s = report["seconds"]
    typer.echo(
        f"wrote {report['out']}: {report['num_slots']} slots, {report['num_params']:,} LoRA parameters for "
        f"{report['backbone']} "
        f"({report['generator']}, {report['n_prompts']} prompts of {report['num_items']}, seed {report['seed']})"
    )
    typer.echo(
        f"{s['per_adapter']:.3f} s per adapter (encode {s['encode']:.3f}, generate {s['generate']:.3f}, save "
        f"{s['save']:.3f}); "
        f"one-time loads: generator {s['load_generator']:.2f} s, encoder {s['load_encoder']:.2f} s"
    )
