"""Build a teacher zoo and score every task's base model vs its teachers on the eval split.

    python benchmarks/zoo.py --config configs/zoo/default.yaml            # the full default zoo (hours on 2 cores)
    python benchmarks/zoo.py --config configs/zoo/quick.yaml --limit 50   # a first look

The build is the library's resumable ``build_zoo`` (kill it and rerun: finished adapters are skipped);
evaluation results are cached per task in ``<out>/eval/<task>.json`` keyed by the adapters' sha256, so a
rerun after a kill re-evaluates only what changed. Each single-task teacher is scored at its *last*
checkpoint (one per seed); mixed-task teachers are built but not scored here (they serve the
compositionality tests). Writes ``results/<name>.md`` and ``.json``: per task, base accuracy, each
teacher's accuracy, the mean teacher gain in points, and the wall time of the build per adapter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import command_line, machine, recipe_difference, screen_recipe, write_json  # noqa: E402
from deltalora.backbones import load_backbone  # noqa: E402
from deltalora.eval import evaluate_task  # noqa: E402
from deltalora.experiment.config import EvalConfig  # noqa: E402
from deltalora.experiment.eval_cache import EvalCache  # noqa: E402
from deltalora.lora import load_adapter  # noqa: E402
from deltalora.paths import atomic_write_bytes  # noqa: E402
from deltalora.tasks import build_task, constant_answer_score, source_names  # noqa: E402
from deltalora.zoo import build_zoo, load_zoo_config, parse_shard  # noqa: E402
from deltalora.zoo.build import selected_specs, zoo_precision  # noqa: E402


def reused_scores(
    run_dirs, task, split: str, limit: int | None, run_limit: int | None, backbone, arms: dict
) -> dict[str, dict]:
    """The arms of ``arms`` (name -> adapter, None = base) that a run's eval cache scored on the same items. A run keys
    a score by the adapter's content, the task, split, its configured item limit (``run_limit``; default: the items
    this call scores) and the backbone weights; a hit must have scored as many items as this call does (the first n
    of the split, so the same items)."""
    n = len(task.split(split)[: limit or None])
    found: dict[str, dict] = {}
    for run_dir in run_dirs:
        cache = EvalCache(Path(run_dir), task.name, EvalConfig(split=split, limit=run_limit or n), backbone)
        for name, w in arms.items():
            if name not in found and (r := cache.get(cache.key(w))) is not None and r.get("n") == n:
                found[name] = r
    return found


def recipe_fields(cfg, limit: int | None, split: str) -> dict:
    """What this call's results JSON records of its recipe (its summary's backbone, teacher, seeds, subset, limit
    and split): what :func:`_util.screen_recipe` compares between screens."""
    return {
        "backbone": cfg.backbone,
        "teacher": cfg.teacher.model_dump(mode="json"),
        "seeds": cfg.seeds,
        "subset": cfg.subset,
        "limit": limit,
        "split": split,
    }


def skip_screened(cfg, files: list[Path], limit: int | None, split: str):
    """``cfg`` without the tasks that ``files`` (earlier screens of the same recipe) already scored."""
    mine = screen_recipe(recipe_fields(cfg, limit, split))
    done: set[str] = set()
    for f in files:
        try:
            earlier = json.loads(f.read_text())
            theirs, names = screen_recipe(earlier["summary"]), {r["task"] for r in earlier["rows"]}
        except (OSError, ValueError, KeyError) as exc:
            sys.exit(f"{f}: not a screen results JSON of benchmarks/zoo.py ({exc}); pass results/zoo_screen_*.json")
        diff = recipe_difference(mine, theirs)
        if diff:
            sys.exit(f"{f}: screened with another recipe ({', '.join(diff)} differ); screen those tasks again instead")
        done |= names
    specs, _ = selected_specs(cfg)
    return cfg.model_copy(update={"tasks": [s.name for s in specs if s.name not in done]})


def only_sources(cfg, sources: list[str]):
    """``cfg`` with only the single-task teachers whose task comes from one of ``sources``."""
    known = set(source_names())
    if unknown := [s for s in sources if s not in known]:
        sys.exit(f"--source {unknown[0]}: not a task source; choose from {sorted(known)}")
    specs, _ = selected_specs(cfg)
    keep = [s.name for s in specs if s.source in sources]
    if not keep:
        sys.exit(f"{cfg.suite}: no task of {cfg.tasks or 'the suite'} comes from {sources}; nothing to screen")
    return cfg.model_copy(update={"tasks": keep})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/zoo/default.yaml")
    ap.add_argument("--out", default=None, help="zoo directory (default runs/bench-zoo/<config stem>)")
    ap.add_argument("--limit", type=int, default=None, help="score at most this many eval items per task")
    ap.add_argument("--batch-rows", type=int, default=32)
    ap.add_argument(
        "--split",
        default="eval",
        choices=["eval", "condition"],
        help="score on this split; 'condition' screens tasks without touching the eval items",
    )
    ap.add_argument(
        "--shard", default=None, help="i/n: build and score only this shard of the jobs (zoo build --shard)"
    )
    ap.add_argument(
        "--reuse",
        action="append",
        default=[],
        help="another zoo dir whose same-recipe jobs are copied (zoo build --reuse)",
    )
    ap.add_argument(
        "--reuse-eval",
        action="append",
        default=[],
        type=Path,
        help="a `deltalora run` / `deltalora compose` directory whose eval cache already scored some of these arms "
        "(same adapter content, task, split and items, float32): those scores are read instead of computed",
    )
    ap.add_argument(
        "--reuse-eval-limit",
        type=int,
        default=None,
        help="the eval.limit those runs were configured with (default: the items this call scores per task)",
    )
    ap.add_argument(
        "--skip-screened",
        action="append",
        default=[],
        type=Path,
        help="an earlier screen's results JSON with the same recipe (teacher, items, split): its tasks are neither "
        "built nor scored here (select_suite.py --screen takes both files)",
    )
    ap.add_argument(
        "--source",
        action="append",
        default=[],
        help="only the tasks of this task source (repeatable), e.g. reasoning_gym: screen what this machine can "
        "fetch (the package index stopped serving the BIG-bench sdist in 2026-12)",
    )
    ap.add_argument(
        "--name", default=None, help="results/<name>.md|json (default: zoo for default.yaml, else zoo_<stem>)"
    )
    args = ap.parse_args()

    cfg = load_zoo_config(args.config)
    if args.skip_screened:
        cfg = skip_screened(cfg, args.skip_screened, args.limit, args.split)
    if args.source:
        cfg = only_sources(cfg, args.source)
    stem = Path(args.config).stem
    out = Path(args.out or f"runs/bench-zoo/{stem}")
    shard = parse_shard(args.shard)
    name = args.name or ("zoo" if stem == "default" else f"zoo_{stem}")
    if shard != (0, 1):  # a shard scores only its own tasks: never over another shard's (or the whole run's) file
        name += f"_shard{shard[0]}of{shard[1]}"
    backbone = load_backbone(cfg.backbone, cfg.runtime)

    t0 = time.perf_counter()
    entries = build_zoo(cfg, out, shard=shard, progress=True, backbone=backbone, reuse=args.reuse)
    build_call_s = time.perf_counter() - t0
    train_s = {}
    for e in entries:  # one timing per job (all its checkpoints share it)
        train_s[e.run] = e.extra.get("train_seconds", 0.0)

    last = max(cfg.tail_steps())
    chosen, _ = selected_specs(cfg)
    built = {e.task for e in entries}
    chosen = [s for s in chosen if s.name in built]  # a shard scores only the tasks it built
    rows = []
    for spec in chosen:
        teachers = sorted((e for e in entries if e.task == spec.name and e.step == last), key=lambda e: e.seed)
        key = hashlib.sha256(json.dumps([args.limit, [e.sha256 for e in teachers]]).encode()).hexdigest()[:16]
        cache = out / "eval" / (f"{spec.name}.json" if args.split == "eval" else f"{spec.name}.{args.split}.json")
        task = build_task(spec, seed=cfg.split_seed)
        constant = constant_answer_score(task, task.split(args.split)[: args.limit or None])[0]
        if cache.is_file() and json.loads(cache.read_text()).get("key") == key:
            res = json.loads(cache.read_text())["result"]
        else:
            arms = {"base": None, **{f"s{e.seed}": load_adapter(out / e.path, arch=backbone.arch) for e in teachers}}
            found = reused_scores(args.reuse_eval, task, args.split, args.limit, args.reuse_eval_limit, backbone, arms)
            todo = {k: w for k, w in arms.items() if k not in found}
            res = {"arms": {}, "seconds": 0.0, "kind": spec.kind}
            if todo:
                res = evaluate_task(
                    backbone, task, todo, split=args.split, limit=args.limit, batch_rows=args.batch_rows
                )
            res["arms"] = {k: found.get(k) or res["arms"][k] for k in arms}
            res["reused"] = sorted(found)
            atomic_write_bytes(cache, (json.dumps({"key": key, "result": res}, indent=1) + "\n").encode())
        base = res["arms"]["base"]
        teach = {k: v for k, v in res["arms"].items() if k != "base"}
        mean_t = statistics.mean(v["accuracy"] for v in teach.values())
        rows.append(
            {
                "task": spec.name,
                "family": spec.family,
                "kind": spec.kind,
                "n": base["n"],
                "base": base["accuracy"],
                "base_stderr": base["stderr"],
                "teachers": {k: v["accuracy"] for k, v in teach.items()},
                "teacher_mean": mean_t,
                "gain_points": 100 * (mean_t - base["accuracy"]),
                "constant": constant,  # the best single answer to every scored item (the majority-label baseline)
                "worse_than_base": [k for k, v in teach.items() if v["accuracy"] < base["accuracy"]],
                "eval_seconds": res["seconds"],
                "reused_arms": res.get("reused", []),
            }
        )
        print(
            f"{spec.name:<28} base {base['accuracy']:.3f}  teachers {mean_t:.3f}  gain {rows[-1]['gain_points']:+.1f}",
            flush=True,
        )

    gains = [r["gain_points"] for r in rows]
    jobs = list(train_s.values())
    # how far one task's teachers land apart between seeds (max - min accuracy, points), beside one score's noise
    seeded = [r for r in rows if len(r["teachers"]) > 1]
    spreads = [100 * (max(r["teachers"].values()) - min(r["teachers"].values())) for r in seeded]
    noise = [100 * math.sqrt(a * (1 - a) / r["n"]) for r in seeded for a in r["teachers"].values()]
    summary = {
        "config": args.config,
        "tasks": len(rows),
        "adapters": len(entries),
        "jobs": len(jobs),
        "median_gain_points": statistics.median(gains),
        "mean_gain_points": statistics.mean(gains),
        "tasks_with_a_teacher_worse_than_base": [r["task"] for r in rows if r["worse_than_base"]],
        "tasks_with_mean_teacher_worse_than_base": [r["task"] for r in rows if r["gain_points"] < 0],
        "seed_spread_points": (
            {
                "tasks": len(spreads),
                "median": statistics.median(spreads),
                "mean": statistics.mean(spreads),
                "max": max(spreads),
                "score_se_mean": statistics.mean(noise),  # binomial SE of one teacher's score
            }
            if spreads
            else None
        ),
        "train_seconds_total": round(sum(jobs), 1),
        "train_seconds_per_job_median": round(statistics.median(jobs), 1) if jobs else None,
        "train_seconds_per_adapter": round(sum(jobs) / max(1, len(entries)), 1),
        "build_call_seconds_this_run": round(build_call_s, 1),
        "eval_seconds_total": round(sum(r["eval_seconds"] for r in rows), 1),
        "reused_arms": sum(len(r["reused_arms"]) for r in rows),
        "scored_arms": sum(1 + len(r["teachers"]) for r in rows),
        **recipe_fields(cfg, args.limit, args.split),
        "teacher_precision": zoo_precision(cfg).name,
        "skipped_screened": [str(f) for f in args.skip_screened],
        "sources": args.source or None,
    }
    write_json(
        Path("results") / f"{name}.json",
        {"command": command_line(), "machine": machine(), "summary": summary, "rows": rows},
    )
    md = [
        f"# Teacher zoo: base vs teachers ({cfg.backbone})",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine()}",
        "",
        f"{len(rows)} tasks, {len(jobs)} training runs, {len(entries)} adapters "
        f"({len(cfg.seeds)} seed(s) x {len(cfg.tail_steps())} tail checkpoints, plus {len(cfg.mixed)} mixed pair(s)). "
        f"Teachers: r{cfg.teacher.lora.rank} on {','.join(cfg.teacher.lora.targets)}, {cfg.teacher.steps} steps "
        f"x batch {cfg.teacher.batch_size}, precision {summary['teacher_precision']} "
        f"(teacher.precision {cfg.teacher.precision}: {zoo_precision(cfg).reason}). Each seed's last checkpoint "
        f"is scored on the {args.split} split{'' if args.limit is None else f' (first {args.limit} items)'}.",
        "",
        f"**Median teacher gain: {summary['median_gain_points']:+.1f} points** "
        f"(mean {summary['mean_gain_points']:+.1f}); tasks where the mean teacher is worse than base: "
        f"{summary['tasks_with_mean_teacher_worse_than_base'] or 'none'}; "
        f"where any teacher is: {summary['tasks_with_a_teacher_worse_than_base'] or 'none'}.",
        "",
    ]
    if spreads:
        sp = summary["seed_spread_points"]
        md += [
            f"Seeds: on the {sp['tasks']} tasks with ≥ 2 seeds, a task's teachers differ by {sp['median']:.1f} points "
            f"(median of max − min over seeds; mean {sp['mean']:.1f}, largest {sp['max']:.1f}); one teacher's score "
            f"has a binomial standard error of {sp['score_se_mean']:.1f} points on average.",
            "",
        ]
    md += [
        f"Training wall time: {summary['train_seconds_total']:.0f} s in all, median "
        f"{summary['train_seconds_per_job_median']} s per run, "
        f"{summary['train_seconds_per_adapter']} s per adapter; evaluation {summary['eval_seconds_total']:.0f} s"
        + (
            f" ({summary['reused_arms']} of {summary['scored_arms']} scores read from the eval caches of "
            f"{', '.join(str(d) for d in args.reuse_eval)}: same adapters, items and float32 evaluator)."
            if summary["reused_arms"]
            else "."
        ),
        "",
        "`const`: the score of the best single answer given to every scored item (the majority-label baseline); a "
        "teacher at or below it may have learned only the commonest answer.",
        "",
        "| task | family | kind | n | base | const | teachers | gain (pts) |",
        "|---|---|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        t = ", ".join(f"{k} {v:.3f}" for k, v in r["teachers"].items())
        md.append(
            f"| {r['task']} | {r['family']} | {r['kind']} | {r['n']} | {r['base']:.3f} ± {r['base_stderr']:.3f} "
            f"| {r['constant']:.3f} | {t} | {r['gain_points']:+.1f} |"
        )
    (Path("results") / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[8:12]))


if __name__ == "__main__":
    main()
