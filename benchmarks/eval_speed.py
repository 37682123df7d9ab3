"""Evaluator speed: whole ``evaluate_task`` calls, this checkout against an earlier revision, in one run.

    python benchmarks/eval_speed.py --baseline db94229 --items 32 --adapters 3

Two worker processes on the same machine: one imports ``deltalora`` from a temporary ``git worktree`` of
``--baseline`` (the evaluator before the change being measured), the other from this checkout. Each task is
scored by both, alternately (baseline first, then this checkout, ``--repeats`` times), with the same arms: the
base model plus ``--adapters`` random LoRA adapters (r8 on all 7 projections, A and B ~ N(0, ``--std``), seeded,
so both workers build identical ones). Reported per task: the median wall time of each, the speed-up, and the
share of predictions that agree (fp32 against fp32: all must). ``--precision bfloat16`` runs the *after* worker in
bf16 and reports its agreement with fp32. Writes results/eval_speed[_PRECISION].{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_TASKS = (
    "rg_word_sequence_reversal,bb_object_counting,rg_family_relationships,bb_plural,rg_spell_backward,"
    "bb_navigate,bb_winowhy,bb_date_understanding"
)


def worker(args) -> None:
    """Serve ``{"task": name}`` requests on stdin with ``evaluate_task`` from the ``deltalora`` on sys.path."""
    import torch

    from deltalora.backbones import load_backbone
    from deltalora.config import LoraSpec, RuntimeConfig
    from deltalora.eval import evaluate_task
    from deltalora.lora import LoraWeights, derive_layout
    from deltalora.tasks import build_task, get_spec, load_suite

    torch.set_num_threads(args.threads)
    b = load_backbone(args.backbone, RuntimeConfig(device=args.device, dtype=args.dtype), progress=False)
    layout = derive_layout(b.arch, LoraSpec(rank=8, alpha=16, targets="q,k,v,o,gate,up,down"))
    arms = {
        "base": None,
        **{f"adapter{s}": LoraWeights.random(layout, std=args.std, seed=s) for s in range(args.adapters)},
    }
    specs = load_suite(None)
    tasks = {}
    import deltalora

    print(json.dumps({"ready": True, "package": deltalora.__file__}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        name = req["task"]
        if name not in tasks:
            tasks[name] = build_task(get_spec(specs, name))
        t0 = time.perf_counter()
        extra = {} if args.precision == "float32" else {"precision": args.precision}  # older revisions lack the option
        res = evaluate_task(
            b, tasks[name], arms, limit=args.items, batch_rows=args.batch_rows, keep_predictions=True, **extra
        )
        seconds = time.perf_counter() - t0
        print(
            json.dumps(
                {
                    "seconds": seconds,
                    "kind": res["kind"],
                    "arms": {
                        a: {"accuracy": r["accuracy"], "predictions": r["predictions"]} for a, r in res["arms"].items()
                    },
                }
            ),
            flush=True,
        )


class Worker:
    def __init__(self, src: Path, args, precision: str = "float32"):
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "--backbone",
            args.backbone,
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--items",
            str(args.items),
            "--adapters",
            str(args.adapters),
            "--std",
            str(args.std),
            "--batch-rows",
            str(args.batch_rows),
            "--threads",
            str(args.threads),
            "--precision",
            precision,
        ]
        env = {**os.environ, "PYTHONPATH": str(src)}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        ready = json.loads(self.proc.stdout.readline())
        if not Path(ready["package"]).resolve().is_relative_to(src.resolve()):
            raise SystemExit(f"worker for {src} imported deltalora from {ready['package']}")

    def run(self, task: str) -> dict:
        self.proc.stdin.write(json.dumps({"task": task}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker died on {task}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="db94229", help="git revision whose evaluator is the 'before'")
    ap.add_argument("--backbone", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--std", type=float, default=0.01)
    ap.add_argument("--batch-rows", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtype", default="float32", help="the backbone's weights dtype")
    ap.add_argument(
        "--precision",
        default="float32",
        help="evaluate_task precision of the 'after' worker (bfloat16: agreement with the fp32 'before' is reported)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(ROOT / "src"))
    from _util import command_line, machine, write_json

    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    )
    with tempfile.TemporaryDirectory(prefix="eval-speed-") as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True, capture_output=True
        )
        try:
            before, after = Worker(tree / "src", args), Worker(ROOT / "src", args, args.precision)
            rows = []
            for name in filter(None, args.tasks.split(",")):
                secs = {"before": [], "after": []}
                res = {}
                for _ in range(args.repeats):
                    for label, w in (("before", before), ("after", after)):
                        res[label] = w.run(name)
                        secs[label].append(res[label]["seconds"])
                pairs = [
                    (p, q)
                    for a in res["before"]["arms"]
                    for p, q in zip(res["before"]["arms"][a]["predictions"], res["after"]["arms"][a]["predictions"])
                ]
                agreement = sum(p == q for p, q in pairs) / len(pairs)
                identical = agreement == 1.0
                t0, t1 = statistics.median(secs["before"]), statistics.median(secs["after"])
                row = {
                    "task": name,
                    "kind": res["after"]["kind"],
                    "before_s": t0,
                    "after_s": t1,
                    "speedup": t0 / t1,
                    "identical": identical,
                    "agreement": agreement,
                    "seconds": secs,
                    "accuracy": {a: r["accuracy"] for a, r in res["after"]["arms"].items()},
                }
                print(
                    f"{name:<28} {row['kind']:<5} {t0:7.1f} s -> {t1:7.1f} s  "
                    f"{t0 / t1:.2f}x  agreement={100 * agreement:.1f}%",
                    flush=True,
                )
                rows.append(row)
            before.close()
            after.close()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)

    total0, total1 = sum(r["before_s"] for r in rows), sum(r["after_s"] for r in rows)
    mach = machine()
    res = {
        "command": command_line(),
        "machine": mach,
        "baseline": rev,
        "after": head + (" + uncommitted changes" if dirty else ""),
        "backbone": args.backbone,
        "dtype": args.dtype,
        "precision": args.precision,
        "items": args.items,
        "arms": 1 + args.adapters,
        "tasks": rows,
        "total_before_s": total0,
        "total_after_s": total1,
    }
    stem = "eval_speed" if args.precision == "float32" else f"eval_speed_{args.precision}"
    write_json(args.out / f"{stem}.json", res)
    md = [
        f"# Evaluator speed: whole `evaluate_task` calls, {rev} vs {res['after']} ({args.backbone}, {args.precision})",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {mach['cpu']} (capability {mach['cpu_capability']}, amx_bf16 {mach['amx_bf16']}), "
        f"{mach['cpu_count']} cores, torch {mach['torch']}, {mach['torch_threads']} threads; weights {args.dtype}, "
        f"*before* in float32, *after* in {args.precision}.",
        "",
        f"Each call scores {args.items} eval items under {1 + args.adapters} arms (base + {args.adapters} random "
        f"r8 adapters, σ = {args.std}), batch_rows {args.batch_rows}. *before* = the evaluator at {rev}, *after* "
        f"= this checkout; both in one run, alternating per task, medians of {args.repeats}. *agreement* = the "
        "share of (arm, item) predictions that are the same in both (float32 against float32 must give 100 %).",
        "",
        "| task | kind | before (s) | after (s) | speed-up | agreement |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['task']} | {r['kind']} | {r['before_s']:.1f} | {r['after_s']:.1f} | {r['speedup']:.2f}× | "
            f"{100 * r['agreement']:.1f} % |"
        )
    md.append(
        f"| **all** | | {total0:.1f} | {total1:.1f} | {total0 / total1:.2f}× | "
        f"{100 * sum(r['agreement'] for r in rows) / len(rows):.1f} % |"
    )
    (args.out / f"{stem}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
