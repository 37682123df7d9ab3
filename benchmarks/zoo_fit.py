"""How much of a zoo a generator can learn: ΔW agreement within and between tasks, and the L_weights floor.

    python benchmarks/zoo_fit.py --zoo runs/bench-zoo/default

Over the tasks whose every seed is in the zoo (a partial build counts what is finished): the ΔW cosine
(Σ_slots ⟨s·B₁A₁, s·B₂A₂⟩ over the norms) of last checkpoints of two seeds of one task and of two different
tasks, the floor of L_weights in each space (:meth:`deltalora.training.WeightLoss.floor`: every teacher
predicted by its task's mean) and, for a canonical zoo, how far the teachers' A moved from the zoo's init.
Writes ``results/zoo_fit.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path

import torch

from _util import command_line, machine, write_json
from deltalora.lora import LoraWeights, load_adapter
from deltalora.paths import atomic_write_bytes
from deltalora.training import WeightLoss, product_sq_norm
from deltalora.zoo import read_init, read_manifest, zoo_init_kind


def _cosine(w: LoraWeights, sq: torch.Tensor, i: int, j: int) -> float:
    pair = LoraWeights.stack([w.select(i)]), LoraWeights.stack([w.select(j)])
    inner = (sq[i] + sq[j] - product_sq_norm(*pair)[0]) / 2
    return float(inner / (sq[i] * sq[j]).sqrt())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("results/zoo_fit"))
    args = ap.parse_args()
    entries = [e for e in read_manifest(args.zoo) if not e.mixed]
    seeds_of: dict[str, set[int]] = {}
    for e in entries:
        seeds_of.setdefault(e.task, set()).add(e.seed)
    all_seeds = set().union(*seeds_of.values())
    tasks = sorted(t for t, s in seeds_of.items() if s == all_seeds)
    chosen = [e for e in entries if e.task in tasks]
    if len(tasks) < 2:
        raise SystemExit(f"{args.zoo}: fewer than 2 tasks have every seed finished; build more of the zoo first")
    w = LoraWeights.stack([load_adapter(args.zoo / e.path, dtype=torch.float32) for e in chosen])
    groups = [e.task for e in chosen]
    floors = {kind: WeightLoss(kind, w).floor(w, groups) for kind in ("product", "slots", "tokens")}
    sq = product_sq_norm(w)
    last = max(e.step for e in chosen)
    tails = [i for i, e in enumerate(chosen) if e.step == last]
    same, other = [], []
    for i, j in itertools.combinations(tails, 2):
        (same if chosen[i].task == chosen[j].task else other).append(_cosine(w, sq, i, j))
    init = read_init(args.zoo)
    drift = None
    if init is not None:
        base = sum(float(init.A[k].square().sum()) for k in init.A) ** 0.5
        drift = [sum(float((w.A[k][i] - init.A[k]).square().sum()) for k in w.A) ** 0.5 / base for i in tails]
    res = {
        "command": command_line(),
        "machine": machine(),
        "zoo": str(args.zoo),
        "init": zoo_init_kind(args.zoo),
        "tasks": tasks,
        "teachers": len(chosen),
        "weight_loss_floor": floors,
        "delta_w_cosine_same_task": same,
        "delta_w_cosine_other_task": other,
        "a_drift_from_init": drift,
    }
    write_json(args.out.with_suffix(".json"), res)
    med = statistics.median
    lines = [
        f"# What a generator can learn from `{args.zoo}` ({res['init']} init)",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']['cpu']}, torch {res['machine']['torch']}",
        "",
        f"{len(tasks)} tasks with every seed finished, {len(chosen)} teachers: {', '.join(tasks)}.",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| ΔW cosine, two seeds of one task (median of {len(same)}) | {med(same):.3f} |",
        f"| ΔW cosine, two different tasks (median of {len(other)}) | {med(other):.3f} |",
        *[f"| L_weights floor, {k} | {v:.4f} |" for k, v in floors.items()],
        *([f"| A moved from the zoo's init (relative, median) | {med(drift):.3f} |"] if drift else []),
        "",
    ]
    atomic_write_bytes(args.out.with_suffix(".md"), "\n".join(lines).encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
