"""Write the default suite as the measured selection of the candidate tasks.

    python benchmarks/select_suite.py --screen results/zoo_screen_condition.json
    python benchmarks/select_suite.py --candidates configs/tasks/candidates-large.yaml --out configs/tasks/large.yaml \
        --screen results/zoo_screen_condition.json --screen results/zoo_screen_large.json

Keeps every candidate whose seed-0 teacher beats the base model by at least ``--min-gain`` points on the
screen (``benchmarks/zoo.py --split condition``: the condition split, so the choice never sees an eval item)
and beats the constant-answer predictor (the one answer that scores best on the same screened items; for mc the
commonest gold position) by at least ``--min-gain-over-constant`` points: a teacher that only learned to give the
commonest answer helps the score but does not do the task (``configs/tasks/default.yaml`` was selected before
this floor existed; ``--min-gain-over-constant=-inf`` reproduces it). It writes ``configs/tasks/default.yaml`` as
``base: candidates.yaml`` + ``keep: [...]``, with the measured gain of every task, kept or dropped, in its header.
Refuses (and writes nothing) when the selection would have fewer than ``--min-tasks`` tasks or ``--min-families``
families.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _util import recipe_difference, screen_recipe
from deltalora.paths import atomic_write_bytes
from deltalora.tasks import build_task, constant_answer_score, load_suite


def constant_score(spec, split: str, limit: int | None) -> float:
    """The constant-answer predictor's score on the items the screen scored (the first ``limit`` of ``split``)."""
    task = build_task(spec)
    return constant_answer_score(task, task.split(split)[: limit or None])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--screen",
        action="append",
        default=None,
        help="a screen's results JSON (repeatable: screens of the same recipe, e.g. one run with --skip-screened "
        "of another; a task takes its row from the first file that has it). Default: "
        "results/zoo_screen_condition.json",
    )
    ap.add_argument("--candidates", default="configs/tasks/candidates.yaml")
    ap.add_argument("--out", default="configs/tasks/default.yaml")
    ap.add_argument("--min-gain", type=float, default=5.0, help="points the teacher must gain over base")
    ap.add_argument(
        "--min-gain-over-constant",
        type=float,
        default=5.0,
        help="points the teacher must gain over the best constant answer on the screened items (the majority-label "
        "baseline; builds each candidate to read its gold answers)",
    )
    ap.add_argument("--min-tasks", type=int, default=24)
    ap.add_argument("--min-families", type=int, default=5)
    ap.add_argument(
        "--source",
        action="append",
        default=[],
        help="only the candidates of this task source (repeatable): the sources whose data this machine can fetch "
        "(the package index stopped serving the BIG-bench sdist in 2026-12). Default: every candidate",
    )
    args = ap.parse_args()

    files = args.screen or ["results/zoo_screen_condition.json"]
    screens = [json.loads(Path(f).read_text()) for f in files]
    for f, other in zip(files[1:], screens[1:]):
        diff = recipe_difference(screen_recipe(screens[0]["summary"]), screen_recipe(other["summary"]))
        if diff:
            sys.exit(f"{f}: screened with another recipe than {files[0]} ({', '.join(diff)} differ); rescreen")
    rows: dict[str, dict] = {}
    for screen in screens:
        for r in screen["rows"]:
            rows.setdefault(r["task"], r)
    candidates = load_suite(args.candidates)
    if args.source:
        candidates = [c for c in candidates if c.source in args.source]
        if not candidates:
            sys.exit(f"{args.candidates}: no candidate comes from {args.source}; check the source names")
    unscreened = [s.name for s in candidates if s.name not in rows]
    if unscreened:
        sys.exit(f"{', '.join(files)}: no screen result for {unscreened}; screen every candidate first")
    screen = screens[0]
    s = screen["summary"]
    constant = {c.name: constant_score(c, s["split"], s["limit"]) for c in candidates}
    keep = [
        c
        for c in candidates
        if rows[c.name]["gain_points"] >= args.min_gain
        and not rows[c.name]["worse_than_base"]
        and 100 * (rows[c.name]["teacher_mean"] - constant[c.name]) >= args.min_gain_over_constant - 1e-9
    ]
    families = sorted({s.family for s in keep})
    if len(keep) < args.min_tasks or len(families) < args.min_families:
        sys.exit(
            f"only {len(keep)} tasks in {len(families)} families reach +{args.min_gain:g} points over base and "
            f"+{args.min_gain_over_constant:g} over the constant answer; "
            f"need {args.min_tasks} in {args.min_families} — add candidates or change the teacher recipe"
        )
    lines = [
        f"# The task suite: the candidates ({Path(args.candidates).name}) on which a small LoRA measurably helps.",
        f"# Written by `{' '.join(['python', 'benchmarks/select_suite.py'] + sys.argv[1:])}` from {', '.join(files)}:",
        f"# each candidate's seed-0 teacher ({s['backbone']}, r{s['teacher']['lora']['rank']}, "
        f"{s['teacher']['steps']} steps) vs the base model on the first {s['limit']} items of the",
        f"# {s['split']} split (never the eval split). Kept: gain >= +{args.min_gain:g} points over base, the "
        f"teacher not below base, and >= +{args.min_gain_over_constant:g}",
        "# points over `const`, the best single answer given to every item (the majority-label baseline).",
        *([f"# Candidates of the sources {', '.join(args.source)} only."] if args.source else []),
        "#",
        f"# {'task':<39} {'family':<12} {'base':>5}  {'const':>5}  {'teacher':>7}  {'gain':>6}  vs const",
    ]
    for c in candidates:
        r = rows[c.name]
        mark = "keep" if c in keep else "drop"
        const = constant[c.name]
        lines.append(
            f"# {mark} {c.name:<34} {c.family:<12} {r['base']:5.2f}  {const:5.2f}  {r['teacher_mean']:7.2f}  "
            f"{r['gain_points']:+6.1f}  {100 * (r['teacher_mean'] - const):+7.1f}"
        )
    base = os.path.relpath(Path(args.candidates).resolve(), Path(args.out).resolve().parent)
    lines += [f"base: {base}", "keep:"] + [f"  - {c.name}" for c in keep]
    atomic_write_bytes(Path(args.out), ("\n".join(lines) + "\n").encode())
    print(f"{args.out}: {len(keep)} of {len(candidates)} tasks in {len(families)} families ({', '.join(families)})")


if __name__ == "__main__":
    main()
