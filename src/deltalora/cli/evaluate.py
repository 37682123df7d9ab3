"""``deltalora eval``: score the base model and adapters on a task or a data file."""

# Library imports sit inside the commands: the library pulls in torch/transformers (~5 s), so importing it
# lazily keeps `deltalora --help` fast (~0.2 s).

from __future__ import annotations

from pathlib import Path

import typer

from .common import emit_json, run_guarded


def eval_cmd(
    backbone: str = typer.Option(..., help="Registered backbone name, local model dir, or HF id."),
    adapter: list[Path] = typer.Option([], "--adapter", help="PEFT adapter directory (repeatable)."),
    task: str = typer.Option(None, help="Task name from the suite."),
    data: Path = typer.Option(None, help="A JSONL or DnD JSON file: all of its items are evaluated."),
    split: str = typer.Option("eval", help="Split of --task to evaluate (train, condition, eval)."),
    suite: Path = typer.Option(None, help="Suite YAML (default: configs/tasks/default.yaml)."),
    seed: int = typer.Option(0, help="Split seed of the task."),
    limit: int = typer.Option(None, help="Evaluate only the first N items."),
    batch_rows: int = typer.Option(32, help="Rows per forward (arms x items x choices share batches)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("float32", help="float32 or bfloat16 (the weights)."),
    precision: str = typer.Option(
        "float32",
        help="native backend: compute dtype (float32, bfloat16, auto); narrower than "
        "the weights runs under autocast, faster on CPUs with native bf16, some predictions change.",
    ),
    backend: str = typer.Option(
        "native",
        help=(
            "native (deltalora's evaluator) or lm-eval (the [lm-eval] extra: --task names lm-eval tasks, "
            "comma-separated)."
        ),
    ),
    lm_eval_include: Path = typer.Option(
        None, help="lm-eval backend: a directory of lm-eval task YAMLs (local tasks)."
    ),
    num_fewshot: int = typer.Option(None, help="lm-eval backend: few-shot examples per prompt (default: the task's)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Accuracy ± standard error of the base model and each --adapter (MC by log-likelihood, short answers by greedy
    decoding).
    """
    from ..eval.jobs import evaluate_backbone

    res = run_guarded(
        evaluate_backbone,
        backbone,
        adapter,
        task=task,
        data=data,
        split=split,
        suite=suite,
        seed=seed,
        limit=limit,
        batch_rows=batch_rows,
        device=device,
        dtype=dtype,
        precision=precision,
        backend=backend,
        lm_eval_include=lm_eval_include,
        num_fewshot=num_fewshot,
        progress=not json_out,
    )
    if json_out:
        emit_json(res)
    elif backend == "lm-eval":
        typer.echo(f"lm-eval {res['lm_eval_version']}, {res['seconds']} s")
        for name, per_task in res["arms"].items():
            for tn, metrics in per_task.items():
                shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None)
                typer.echo(f"  {name:<20} {tn}: {shown}  (n={res['n'].get(tn)})")
    else:
        typer.echo(f"{res['task']} ({res['kind']}, split {res['split']}), {res['seconds']} s")
        for name, r in res["arms"].items():
            typer.echo(f"  {r['accuracy'] * 100:6.2f} ± {r['stderr'] * 100:5.2f}  (n={r['n']})  {name}")
