"""``deltalora tasks list | show | fetch``."""

# Library imports sit inside the commands: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

from collections import Counter

import typer

from .common import emit_json, run_guarded

app = typer.Typer(no_args_is_help=True)

SUITE_HELP = "Suite YAML (default: configs/tasks/default.yaml)."


@app.command("list")
def list_cmd(
    suite: str = typer.Option(None, "--suite", help=SUITE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List the suite's tasks: name, family, kind, source and requested split sizes (reads no data)."""
    from ..tasks.overview import suite_rows

    rows = run_guarded(suite_rows, suite)
    if json_out:
        emit_json(rows)
        return
    width = max([28] + [len(r["name"]) for r in rows])
    size = Counter(r["group"] for r in rows)  # a group is shown where it ties two or more of these tasks
    head = f"{'name':<{width}} {'family':<12} {'kind':<6} {'source':<14} {'train':>5} {'cond':>5} {'eval':>5}"
    typer.echo(f"{head}  group")
    for r in rows:
        typer.echo(
            f"{r['name']:<{width}} {r['family']:<12} {r['kind']:<6} {r['source']:<14} "
            f"{r['train']:>5} {r['condition']:>5} {r['eval']:>5}  {r['group'] if size[r['group']] > 1 else '-'}"
        )
    groups = len(size)
    typer.echo(
        f"{len(rows)} tasks in {len({r['family'] for r in rows})} families"
        + (f", {groups} hold-out groups (siblings are held out together)" if groups < len(rows) else "")
    )


@app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="Task name (see `deltalora tasks list`)."),
    split: str = typer.Option("eval", help="train, condition or eval."),
    n: int = typer.Option(3, "--n", min=1, help="How many items to show."),
    seed: int = typer.Option(0, help="Split seed."),
    suite: str = typer.Option(None, "--suite", help=SUITE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Build one task and print a few of its items, formatted with the tiny ChatML template."""
    from ..tasks.overview import preview_task

    task, shown = run_guarded(preview_task, name, split=split, n=n, seed=seed, suite=suite)
    if json_out:
        emit_json(
            {
                "name": task.name,
                "family": task.family,
                "kind": task.kind,
                "sizes": task.sizes(),
                "split": split,
                "items": shown,
            }
        )
        return
    typer.echo(f"{task.name} ({task.family}, {task.kind}): {task.description}  sizes {task.sizes()}")
    for i, s in enumerate(shown):
        typer.echo(f"--- {split}[{i}] prompt ---\n{s['prompt']}--- target ---\n{s['target']}\n")


@app.command("fetch")
def fetch_cmd(suite: str = typer.Option(None, "--suite", help=SUITE_HELP)) -> None:
    """Download and extract the data the suite needs (BIG-bench: one sdist, one pass)."""
    from ..tasks.overview import fetch_suite

    run_guarded(fetch_suite, suite)
    typer.echo("ok")
