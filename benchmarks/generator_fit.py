"""Does a generator reproduce its training teachers? Tail L_weights against the floor, and ΔW cosine on seen tasks.

    python benchmarks/generator_fit.py --config configs/zoo/default.yaml --zoo runs/bench-zoo/default \
        --generator compact --generator mixture --steps 300

On the tasks of the zoo whose every seed is finished (a partial build counts what is there; the rest are left
out like held-out tasks), every task's condition pool is split (``ConditionPool.split``: the generators train
on the kept part). Each generator trains with L_weights only (λ = 0, weight loss ``--loss``) for ``--steps``
steps; reported: the floor of L_weights (every teacher predicted by its task's mean teacher,
``WeightLoss.floor``), the first and tail (mean of the last 10 % of steps) L_weights, and per task the ΔW
cosine of an adapter generated from held-back prompts to the task's mean teacher ΔW (and, for reference,
the cosine of the task's own teachers to that mean). Writes ``results/generator_fit.{json,md,png}``.
Nothing here evaluates accuracy: that is the experiment's seen-task section.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from _util import command_line, machine, write_json
from deltalora.backbones import load_backbone
from deltalora.conditions import Conditioner, load_encoder, pools_from_tasks, split_pools
from deltalora.config import RuntimeConfig
from deltalora.deltas import DeltaCache, DeltaSpec, compute_deltas, sources_from_manifest
from deltalora.lora import LoraWeights
from deltalora.paths import atomic_write_bytes
from deltalora.tasks import build_task
from deltalora.training import LambdaSchedule, TeacherDataset, TrainConfig, train_generator
from deltalora.training.logs import read_log
from deltalora.training.losses import product_cosine
from deltalora.zoo import load_zoo_config, read_manifest
from deltalora.zoo.build import selected_specs

PRESETS = {  # row -> (registered generator, options): the defaults, and the variants worth measuring
    "compact": ("compact", {}),
    "compact-p40": ("compact", {"basis_dim": 40}),  # capacity probe: 2.5 M params on Qwen2.5-1.5B r16 all-7, > 1/20
    "mixture": ("mixture", {}),  # factors on a canonical zoo
    "mixture-svd": ("mixture", {"mix": "svd"}),
    "mixture-exact": ("mixture", {"mix": "exact"}),
}


def finished_tasks(zoo: Path) -> tuple[list[str], list[str]]:
    """(tasks with every seed's teachers in the zoo, the other tasks that have some)."""
    entries = [e for e in read_manifest(zoo) if not e.mixed]
    seeds_of: dict[str, set[int]] = {}
    for e in entries:
        seeds_of.setdefault(e.task, set()).add(e.seed)
    every = set().union(*seeds_of.values())
    done = sorted(t for t, s in seeds_of.items() if s == every)
    return done, sorted(set(seeds_of) - set(done))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True, help="the zoo's config (its tasks, backbone)")
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument(
        "--generator", action="append", choices=sorted(PRESETS), help="repeatable (default: compact, mixture)"
    )
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--loss", default="product", choices=("product", "slots", "tokens"))
    ap.add_argument("--seed", type=int, action="append", help="generator seed (and pool split); repeatable (default 0)")
    ap.add_argument("--fraction", type=float, default=0.25, help="share of each condition pool held back")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-fit"))
    ap.add_argument("--out", type=Path, default=Path("results/generator_fit"))
    args = ap.parse_args()
    names = args.generator or ["compact", "mixture"]

    zcfg = load_zoo_config(args.config)
    backbone = load_backbone(zcfg.backbone, zcfg.runtime)
    done, partial = finished_tasks(args.zoo)
    if len(done) < 2:
        raise SystemExit(f"{args.zoo}: fewer than 2 tasks have every seed finished; build more of the zoo first")
    cache = DeltaCache(args.work / "deltas")
    probes, rep = "generic5", "last_token"
    compute_deltas(backbone, sources_from_manifest(args.zoo), probes, rep, cache, progress=True)
    _, specs = selected_specs(zcfg)
    tasks = {s.name: build_task(s, seed=zcfg.split_seed) for s in specs}
    encoder = load_encoder("minilm", RuntimeConfig(device="cpu"))
    spec = DeltaSpec.for_backbone(backbone, probes, rep)
    seeds = args.seed or [0]
    report = {
        "command": command_line(),
        "machine": machine(),
        "zoo": str(args.zoo),
        "tasks": done,
        "left_out": partial,  # tasks with some seeds still to train: left out like held-out tasks
        "steps": args.steps,
        "loss": args.loss,
        "seeds": seeds,
        "generators": {name: {"seeds": {}} for name in names},
    }
    curves: dict[str, dict[int, list[float]]] = {name: {} for name in names}
    for seed in seeds:  # the pool split, and so the training set, depends on the seed
        kept, held = split_pools(pools_from_tasks(tasks.values()), done, args.fraction, seed)
        conditioner = Conditioner(encoder, kept, n_prompts=8)
        heldback = Conditioner(encoder, held, n_prompts=8)
        common = dict(split="train", heldout=partial, cache=cache, arch=backbone.arch)
        ds = TeacherDataset(args.zoo, conditioner, spec, **common)
        teachers = LoraWeights.stack([ds.example(i, 0).weights for i in range(len(ds))])
        singles = [i for i, e in enumerate(ds.entries) if not e.mixed]
        means = {}
        for t in done:
            rows = [i for i in singles if ds.entries[i].task == t]
            means[t] = LoraWeights(
                teachers.layout,
                {k: v[rows].mean(0) for k, v in teachers.A.items()},
                {k: v[rows].mean(0) for k, v in teachers.B.items()},
            )
        if "own_teachers_dw_cosine_median" not in report:
            own = {
                t: product_cosine(
                    LoraWeights.stack([teachers.select(i) for i in singles if ds.entries[i].task == t]),
                    LoraWeights.stack([means[t]] * sum(ds.entries[i].task == t for i in singles)),
                )
                for t in done
            }
            report["own_teachers_dw_cosine_median"] = statistics.median(float(c.mean()) for c in own.values())
            report["teachers"] = len(ds)
        for name in names:
            generator, options = PRESETS[name]
            cfg = TrainConfig(
                generator=generator,
                generator_options=options,
                encoder="minilm",
                n_prompts=8,
                steps=args.steps,
                batch_size=8,
                lr=args.lr,
                warmup_steps=min(10, args.steps - 1),
                weight_loss=args.loss,
                lam=LambdaSchedule(),
                seed=seed,
                save_every=50,
            )
            run = args.work / f"{name}-{args.loss}-s{seed}"
            res = train_generator(cfg, ds, backbone, run, progress=True)
            log = read_log(run / "log.jsonl")
            lw = [log[s]["loss_weights"] for s in sorted(log)]
            curves[name][seed] = lw
            tail = statistics.fmean(lw[-max(1, len(lw) // 10) :])
            gen = res.module.eval()
            cos = {}
            with torch.no_grad():
                for t in done:
                    cond = torch.stack([heldback.sample(t, seed=seed, key=f"fit/{j}") for j in range(3)])
                    cos[t] = float(product_cosine(gen(cond), LoraWeights.stack([means[t]] * 3)).mean())
            g = report["generators"][name]
            g["options"] = {k: v for k, v in gen.spec["options"].items() if k != "library_ref"}
            g["seeds"][seed] = {
                "floor": res.weight_loss_floor,
                "first": lw[0],
                "tail": tail,
                "tail_minus_floor": tail - res.weight_loss_floor,
                "seen_dw_cosine": cos,
                "seen_dw_cosine_median": statistics.median(cos.values()),
            }
            step_s = [log[s]["step_seconds"] for s in sorted(log)]
            g["seeds"][seed]["step_seconds_median"] = statistics.median(step_s)
        del ds, teachers, means
    for g in report["generators"].values():
        for key in ("floor", "first", "tail", "tail_minus_floor", "seen_dw_cosine_median", "step_seconds_median"):
            vals = [r[key] for r in g["seeds"].values()]
            g[key] = statistics.fmean(vals)
            g[f"{key}_std"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
    write_json(args.out.with_suffix(".json"), report)
    _figure(curves, report, args.out.with_suffix(".png"))
    _markdown(report, args.out.with_suffix(".md"))
    print(
        json.dumps(
            {n: {k: g[k] for k in ("floor", "tail", "seen_dw_cosine_median")} for n, g in report["generators"].items()}
        )
    )


def _figure(curves: dict, report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for (name, by_seed), colour in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for j, (seed, lw) in enumerate(sorted(by_seed.items())):
            ax.plot(range(len(lw)), lw, color=colour, alpha=0.8, lw=1, label=name if j == 0 else None)
    floor = next(iter(report["generators"].values()))["floor"]
    ax.axhline(floor, color="k", ls="--", lw=1, label="floor (task-mean teachers)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"L_weights ({report['loss']}, 1 = predicting zero)")
    ax.set_ylim(0, max(1.05, max(max(c) for by_seed in curves.values() for c in by_seed.values()) * 1.02))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(report: dict, path: Path) -> None:
    lines = [
        "# Generator fit: tail L_weights against the floor, ΔW cosine on seen tasks",
        "",
        f"`{report['command']}`",
        "",
        f"Machine: {report['machine'].get('cpu', report['machine'])}. Zoo `{report['zoo']}`: {len(report['tasks'])} "
        f"finished tasks, {report['teachers']} training teachers; weight loss `{report['loss']}`, "
        f"{report['steps']} steps, λ = 0; mean ± std over generator seeds {report['seeds']} (each seed also splits "
        "the condition pools).",
        "",
        "| generator | floor | first L_w | tail L_w | tail − floor | seen-task ΔW cosine (median) | s/step |",
        "|---|---|---|---|---|---|---|",
    ]

    def pm(g: dict, key: str, spec: str) -> str:
        return f"{format(g[key], spec)} ± {format(g[key + '_std'], spec.lstrip('+'))}"

    for name, g in report["generators"].items():
        lines.append(
            f"| {name} | {pm(g, 'floor', '.3f')} | {pm(g, 'first', '.3f')} | {pm(g, 'tail', '.3f')} | "
            f"{pm(g, 'tail_minus_floor', '+.3f')} | {pm(g, 'seen_dw_cosine_median', '.3f')} | "
            f"{g['step_seconds_median']:.2f} |"
        )
    lines += [
        "",
        "For scale: each of a task's own teachers has median ΔW cosine "
        f"{report['own_teachers_dw_cosine_median']:.3f} to their mean (the mean itself has 1). Curve: "
        "`generator_fit.png`.",
        "",
    ]
    atomic_write_bytes(path, "\n".join(lines).encode())


if __name__ == "__main__":
    main()
