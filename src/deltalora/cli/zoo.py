"""``deltalora zoo build | list | import``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import typer

from .common import emit_json, run_guarded

app = typer.Typer(no_args_is_help=True)


def _summary(entries) -> dict:
    by_task: dict[str, dict] = {}
    for e in entries:
        t = by_task.setdefault(e.task, {"task": e.task, "family": e.family, "tasks": list(e.tasks), "adapters": 0,
                                        "seeds": set(), "steps": set()})
        t["adapters"] += 1
        t["seeds"].add(e.seed)
        t["steps"].add(e.step)
    rows = [{**r, "seeds": sorted(r["seeds"]), "steps": sorted(r["steps"])} for _, r in sorted(by_task.items())]
    families: dict[str, int] = defaultdict(int)
    for e in entries:
        families[e.family] += 1
    return {"adapters": len(entries), "tasks": rows, "families": dict(sorted(families.items()))}


def _print_summary(s: dict) -> None:
    typer.echo(f"{'task':<40} {'family':<12} {'adapters':>8}  seeds / steps")
    for r in s["tasks"]:
        typer.echo(f"{r['task']:<40} {r['family']:<12} {r['adapters']:>8}  {r['seeds']} / {r['steps']}")
    fam = ", ".join(f"{k} {v}" for k, v in s["families"].items())
    typer.echo(f"{s['adapters']} adapters, {len(s['tasks'])} tasks ({fam})")


@app.command("build")
def build_cmd(
    config: Path = typer.Option(..., "--config", help="Zoo config YAML (see configs/zoo/)."),
    out: Path = typer.Option(None, "--out", help="Zoo directory (default: runs/zoo/<config stem>)."),
    shard: str = typer.Option(None, "--shard", help="i/n: build every n-th job starting at i (0-based)."),
    reuse: list[Path] = typer.Option(
        None, "--reuse", help="Another zoo dir: copy its finished jobs that have the same recipe instead of training (repeatable)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config key, e.g. --set teacher.precision=float32 (repeatable)."
    ),
) -> None:
    """Train one LoRA per (task, seed) and mixed pair, keep tail checkpoints, list them in manifest.jsonl (resumable)."""

    def go():
        import time

        from ..config import parse_overrides
        from ..zoo import build_zoo, load_zoo_config, parse_shard

        cfg = load_zoo_config(config, parse_overrides(overrides))
        where = out if out is not None else Path("runs") / "zoo" / config.stem
        i_n = parse_shard(shard)
        t0 = time.perf_counter()
        entries = build_zoo(cfg, where, shard=i_n, progress=not json_out, reuse=reuse or ())
        s = _summary(entries)
        s.update(zoo=str(where), shard=f"{i_n[0]}/{i_n[1]}", seconds=round(time.perf_counter() - t0, 1))
        if json_out:
            emit_json(s)
            return
        _print_summary(s)
        typer.echo(f"zoo {where} (shard {s['shard']}), {s['seconds']} s")

    run_guarded(go)


@app.command("list")
def list_cmd(
    zoo: Path = typer.Argument(..., help="Zoo directory (or its manifest.jsonl)."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash every adapter against the manifest."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Adapters of a zoo per task and family."""

    def go():
        from ..zoo import read_manifest

        s = _summary(read_manifest(zoo, verify=verify))
        if json_out:
            emit_json(s)
            return
        _print_summary(s)

    run_guarded(go)


@app.command("import")
def import_cmd(
    dnd: Path = typer.Option(..., "--dnd", help="DnD's data/<domain> folder (one <dataset>/N.safetensors folder per dataset)."),
    out: Path = typer.Option(..., "--out", help="Zoo directory to import into."),
    backbone: str = typer.Option(None, "--backbone", help="Validate against this backbone's layout (else inferred)."),
    prompts: Path = typer.Option(None, "--prompts", help="Folder of <dataset>_train.json prompt files (DnD's prepare/data)."),
    family: list[str] = typer.Option([], "--family", help="DATASET=FAMILY (repeatable); default family 'dnd'."),
    alpha: float = typer.Option(None, "--alpha", help="LoRA alpha (default 2*rank, LLaMA-Factory's default)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Import Drag-and-Drop-LLMs' released teacher checkpoints (N.safetensors per dataset) as PEFT dirs + manifest."""

    def go():
        from ..errors import ConfigError
        from ..zoo import import_dnd

        families = {}
        for f in family:
            if "=" not in f:
                raise ConfigError(f"--family {f!r}: expected DATASET=FAMILY")
            k, v = f.split("=", 1)
            families[k] = v
        entries = import_dnd(dnd, out, backbone=backbone, families=families, prompts_dir=prompts, alpha=alpha,
                             progress=not json_out)
        s = _summary(entries)
        s["zoo"] = str(out)
        if json_out:
            emit_json(s)
            return
        _print_summary(s)

    run_guarded(go)
