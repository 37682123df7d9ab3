"""``deltalora eval``: score the base model and adapters on a task or a data file."""

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
    precision: str = typer.Option("float32", help="native backend: compute dtype (float32, bfloat16, auto); narrower than "
                                  "the weights runs under autocast, faster on CPUs with native bf16, some predictions change."),
    backend: str = typer.Option("native", help="native (deltalora's evaluator) or lm-eval (the [lm-eval] extra: --task names lm-eval tasks, comma-separated)."),
    lm_eval_include: Path = typer.Option(None, help="lm-eval backend: a directory of lm-eval task YAMLs (local tasks)."),
    num_fewshot: int = typer.Option(None, help="lm-eval backend: few-shot examples per prompt (default: the task's)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Accuracy ± standard error of the base model and each --adapter (MC by log-likelihood, short answers by greedy decoding)."""

    def go():
        from ..backbones import load_backbone
        from ..config import RuntimeConfig, model_validate_or_raise
        from ..errors import ConfigError
        from ..eval import evaluate_task, load_arms, task_from_file
        from ..tasks import build_task, get_spec, load_suite

        if backend not in ("native", "lm-eval"):
            raise ConfigError(f"--backend {backend!r}: use native or lm-eval")
        if backend == "lm-eval":
            from ..eval.lm_eval_backend import _import_lm_eval, evaluate_lm_eval

            if data is not None or task is None:
                raise ConfigError("--backend lm-eval scores lm-eval tasks: pass --task NAME[,NAME...] (not --data)")
            _import_lm_eval()  # a missing extra is reported before the backbone loads
            names = [t.strip() for t in task.split(",") if t.strip()]

            def run(b, arms):
                return evaluate_lm_eval(b, arms, names, include_path=lm_eval_include, limit=limit, batch_size=batch_rows,
                                        num_fewshot=num_fewshot)
        else:
            from ..backbones.precision import canonical_precision

            try:
                canonical_precision(precision)
            except ValueError as exc:
                raise ConfigError(f"--precision: {exc}") from None
            if lm_eval_include is not None or num_fewshot is not None:
                raise ConfigError("--lm-eval-include and --num-fewshot belong to --backend lm-eval")
            if (task is None) == (data is None):
                raise ConfigError("pass exactly one of --task NAME or --data FILE")
            t = task_from_file(data) if data is not None else build_task(get_spec(load_suite(suite), task), seed=seed)

            def run(b, arms):
                return evaluate_task(b, t, arms, split=split if data is None else "eval", limit=limit, batch_rows=batch_rows,
                                     precision=precision)

        runtime = model_validate_or_raise(RuntimeConfig, {"device": device, "dtype": dtype}, "runtime options")
        b = load_backbone(backbone, runtime, progress=not json_out)
        res = run(b, load_arms(b, adapter))
        res["backbone"] = backbone
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

    run_guarded(go)
