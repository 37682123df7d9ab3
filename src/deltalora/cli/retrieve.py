"""``deltalora retrieve``: a task's prompts in, the merge of the closest training teachers out."""

# Library imports sit inside the command: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

from pathlib import Path

import typer

from .common import emit_json, run_guarded


def retrieve_cmd(
    index: Path = typer.Option(
        ..., "--index", help="Retrieval index (.safetensors) an experiment run wrote under <run>/retrieval/."
    ),
    prompts: Path = typer.Option(
        ...,
        "--prompts",
        help='Prompt file: JSONL {"prompt"[, "response"|"answer"]} or DnD JSON [{prompt, response, system}].',
    ),
    out: Path = typer.Option(..., "--out", help="Adapter directory to write (a new directory or a previous adapter)."),
    zoo: Path = typer.Option(None, "--zoo", help="The zoo the index was built on (default: the path it recorded)."),
    by: str = typer.Option("delta", "--by", help="delta (predicted Δ vs teacher Δ) or condition (prompt embeddings)."),
    k: int = typer.Option(3, "--k", help="Number of teachers to merge."),
    temperature: float = typer.Option(0.1, "--temperature", help="Merge weights: softmax(cosine / temperature)."),
    merge: str = typer.Option("avg", "--merge", help="avg, svd, ties, dare or dare_ties (see `deltalora merge`)."),
    n_prompts: int = typer.Option(None, "--n-prompts", help="Prompts to sample (default: the index's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt sampling (and DARE's drop)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Retrieve the k training teachers closest to the prompts and merge them into one PEFT adapter."""
    from ..retrieval import retrieve_to_dir

    report = run_guarded(
        retrieve_to_dir,
        index,
        prompts,
        out,
        zoo=zoo,
        by=by,
        k=k,
        temperature=temperature,
        merge=merge,
        n_prompts=n_prompts,
        seed=seed,
    )
    if json_out:
        emit_json(report)
        return
    typer.echo(
        f"wrote {report['out']}: {report['merge']} merge of {report['k']} teachers retrieved by {report['by']}, "
        f"rank {report['rank']} ({report['n_prompts']} prompts of {report['num_items']})"
    )
    for t in report["teachers"]:
        typer.echo(f"  {t['weight']:.4f}  {t['id']}  (cosine {t['cosine']:+.3f})")
