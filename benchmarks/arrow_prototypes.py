"""How far apart are Arrow's expert prototypes in a zoo? (Why Arrow routing may not find a task's own expert.)

    python benchmarks/arrow_prototypes.py --zoo runs/bench-zoo/default --config configs/heldout.yaml

Arrow (PEFT's ``create_arrow_model``) routes each token at each adapted layer to the experts whose prototype,
the top right singular vector of the expert's ΔW = B·A there, is most aligned with the token's input. If the
prototypes of different experts point the same way, the router cannot tell the experts apart. In a canonical
zoo every teacher starts from one LoRA A, so every ΔW starts in the same r-dimensional row space.

The experts are the ones the experiment's Arrow row uses: one per training task (the run config's tasks
minus its held-out ones; every single task of the zoo without ``--config``), the seed-``--seed`` teacher at its
last checkpoint. Per slot: the mean |cosine| between the prototypes of two different experts and, for a
canonical zoo, the share of each prototype's norm inside the row space of the zoo's init A. References:
random unit directions in the input space (E|cos| = sqrt(2 / (π d))) and in an r-dimensional subspace.
Reads adapter files only, no model. Writes ``results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from _util import command_line, machine, write_json
from deltalora.experiment.config import load_run_config
from deltalora.lora import LoraWeights
from deltalora.lora.adapter_io import load_adapter
from deltalora.lora.merge import _factor_svd
from deltalora.paths import atomic_write_bytes
from deltalora.zoo import read_manifest
from deltalora.zoo.canonical import read_init, zoo_init_kind
from deltalora.zoo.manifest import adapter_dir, last_teachers


def prototypes(w: LoraWeights) -> dict[str, torch.Tensor]:
    """Per slot, the top right singular vector of ΔW = B·A (the scale does not change it): the row of the merges'
    rank-1 truncation from the factors (√S·Vᵀ), normalised."""
    out = {}
    for key, a in w.A.items():
        top, _ = _factor_svd(w.B[key].double(), a.double(), 1)
        out[key] = top[0] / top[0].norm().clamp_min(torch.finfo(torch.float64).tiny)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True, type=Path)
    ap.add_argument("--config", help="a run config: its training tasks are the experts (default: every single task)")
    ap.add_argument("--seed", type=int, default=0, help="the zoo seed of each expert (the experiment's Arrow: 0)")
    ap.add_argument("--name", default="arrow_prototypes", help="results/<name>.md|json")
    args = ap.parse_args()

    entries = [e for e in read_manifest(args.zoo / "manifest.jsonl") if not e.mixed]
    tasks = sorted({e.task for e in entries})
    if args.config:
        held = set(load_run_config(args.config).heldout)
        tasks = [t for t in tasks if t not in held]
    experts = {t: e for t in tasks if (e := last_teachers(entries, t).get(args.seed)) is not None}
    if len(experts) < 2:
        raise SystemExit(f"{args.zoo}: fewer than 2 experts with a seed-{args.seed} teacher; build the zoo first")
    weights = {t: load_adapter(adapter_dir(args.zoo, e)) for t, e in experts.items()}
    protos = {t: prototypes(w) for t, w in weights.items()}
    r = next(iter(weights.values())).layout.slots[0].rank
    init = read_init(args.zoo)
    kind = zoo_init_kind(args.zoo)

    names = list(protos)
    slots, per_slot = list(protos[names[0]]), {}
    for key in slots:
        p = torch.stack([protos[t][key] for t in names])
        c = (p @ p.T).abs()
        n = len(names)
        row = {"mean_abs_cos": float((c.sum() - c.diagonal().sum()) / (n * n - n)), "in_dim": p.shape[1]}
        if init is not None:
            q, _ = torch.linalg.qr(init.A[key].double().T)
            row["share_in_init_rowspace"] = float((p @ q).norm(dim=1).mean())
        per_slot[key] = row
    cos = [v["mean_abs_cos"] for v in per_slot.values()]
    dims = sorted({v["in_dim"] for v in per_slot.values()})
    summary = {
        "experts": len(names),
        "slots": len(slots),
        "zoo_init": kind,
        "mean_abs_cos": statistics.fmean(cos),
        "median_slot": statistics.median(cos),
        "min_slot": min(cos),
        "max_slot": max(cos),
        "share_in_init_rowspace": (
            statistics.fmean(v["share_in_init_rowspace"] for v in per_slot.values()) if init is not None else None
        ),
        "reference_random_full": {d: math.sqrt(2 / (math.pi * d)) for d in dims},
        "reference_random_rank_r": math.sqrt(2 / (math.pi * r)),
        "rank": r,
    }
    out = Path(__file__).resolve().parent.parent / "results"
    cmd = command_line()
    write_json(
        out / f"{args.name}.json",
        {
            "command": cmd,
            "machine": machine(),
            "zoo": str(args.zoo),
            "experts": names,
            "summary": summary,
            "per_slot": per_slot,
        },
    )
    s = summary
    ref_full = ", ".join(f"{v:.3f} (d = {d})" for d, v in s["reference_random_full"].items())
    lines = [
        f"# Arrow's expert prototypes in `{args.zoo}`",
        "",
        f"Command: `{cmd}`  ",
        "Reads adapter files only (no model).",
        "",
        f"{s['experts']} experts (seed {args.seed}, last checkpoint; one per task), {s['slots']} slots, zoo init: "
        f"{kind}, LoRA rank {r}.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| mean \\|cos\\| between two experts' prototypes, mean over slots | {s['mean_abs_cos']:.3f} |",
        f"| the same, median / min / max slot | {s['median_slot']:.3f} / {s['min_slot']:.3f} / {s['max_slot']:.3f} |",
        f"| random unit directions in the input space | {ref_full} |",
        f"| random unit directions in one rank-{r} subspace | {s['reference_random_rank_r']:.3f} |",
    ]
    if s["share_in_init_rowspace"] is not None:
        lines.append(f"| share of a prototype's norm in the init A's row space | {s['share_in_init_rowspace']:.3f} |")
    atomic_write_bytes(out / f"{args.name}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
