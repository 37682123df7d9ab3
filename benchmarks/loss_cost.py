"""Step cost of each training loss at a run preset's batch: median seconds per generator step and the ratio to the
weight-only step.

    python benchmarks/loss_cost.py --config configs/heldout.yaml --cache runs/heldout-canonical/deltas --steps 6
    python benchmarks/loss_cost.py --config configs/heldout.yaml --cache runs/heldout-canonical/deltas --steps 6 \
        --task-probes task:train:2 --delta-batch 1 --out results/loss_cost_small     # the held-out preset's arms

Variants (each the preset's ``train`` section with only these keys changed, every loss on from step 0):

- ``weight_only``: L_weights (λ = 0);
- ``delta_generic``: + λ·L_Δ on the preset's probes (generic5) for ``delta_batch`` adapters per step;
- ``kl``: + KL(teacher ‖ generated) on the answer tokens of the teachers' task probes (``kl_probes``);
- ``delta_task``: + λ·L_Δ on task probes (``--task-probes``, each teacher's own train prompts);
- ``delta_task_kl``: both;
- ``b1``: the seed's B1 — weight_scale 0, task-probe Δ + KL + norm penalty.

The teachers' Δ of each probe set is read from (or computed into) ``--cache``: point it at the run's Δ cache so the
run reuses what this computes (the time of a missing probe set's Δ is reported). The first step of every variant is
left out of the median (it builds the probe encodings). Writes ``results/loss_cost.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from _util import command_line, machine, write_json
from deltalora.backbones import load_backbone
from deltalora.conditions import Conditioner, load_encoder, pools_from_tasks
from deltalora.config import RuntimeConfig, deep_merge, model_validate_or_raise
from deltalora.deltas import DeltaCache, DeltaSpec, TaskProbes, compute_deltas, resolve_probes, sources_from_manifest
from deltalora.experiment import load_run_config
from deltalora.experiment.config import zoo_config
from deltalora.paths import atomic_write_bytes
from deltalora.tasks import build_task
from deltalora.training import TeacherDataset, TrainConfig, train_generator
from deltalora.training.logs import read_log
from deltalora.zoo.build import selected_specs

ON = {"warmup_steps": 0, "ramp_steps": 0}


def variants(task_probes: str, kl: float, norm_penalty: float) -> dict[str, dict]:
    delta = {"lam": {"target": 1.0, **ON}}
    tether = {"kl": {"target": kl, **ON}, "kl_probes": task_probes}
    return {
        "weight_only": {"lam": {"target": 0.0}},
        "delta_generic": delta,
        "kl": {"lam": {"target": 0.0}, **tether},
        "delta_task": {**delta, "probes": task_probes},
        "delta_task_kl": {**delta, "probes": task_probes, **tether},
        "b1": {**delta, "probes": task_probes, **tether, "weight_scale": 0.0, "norm_penalty": norm_penalty},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True, help="a run config (its zoo, held-out tasks, train section)")
    ap.add_argument("--cache", type=Path, required=True, help="Δ cache (the run's: <run>/deltas)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--task-probes", default="task:train:8")
    ap.add_argument("--delta-batch", type=int, default=None, help="adapters per step for Δ and KL (default: preset's)")
    ap.add_argument("--kl", type=float, default=0.5)
    ap.add_argument("--norm-penalty", type=float, default=0.1)
    ap.add_argument("--variant", action="append", help="repeatable (default: all)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-loss-cost"))
    ap.add_argument("--out", type=Path, default=Path("results/loss_cost"))
    args = ap.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be ≥ 2 (the first step is left out of the median)")

    cfg = load_run_config(args.config)
    zcfg = zoo_config(cfg)
    zoo_dir = Path(cfg.zoo_dir)
    if not (zoo_dir / "manifest.jsonl").is_file():
        raise SystemExit(f"{zoo_dir}: no zoo there; build it first (deltalora zoo build --config {cfg.zoo})")
    backbone = load_backbone(zcfg.backbone, zcfg.runtime)
    _, specs = selected_specs(zcfg)
    tasks = {s.name: build_task(s, seed=zcfg.split_seed) for s in specs}
    encoder = load_encoder(cfg.train.encoder, RuntimeConfig(device=zcfg.runtime.device))
    conditioner = Conditioner(encoder, pools_from_tasks(tasks.values()), cfg.train.n_prompts, cfg.train.condition_form)
    cache = DeltaCache(args.cache)
    base = json.loads(cfg.train.model_dump_json())
    chosen = variants(args.task_probes, args.kl, args.norm_penalty)
    names = args.variant or list(chosen)
    report = {
        "command": command_line(),
        "machine": machine(),
        "config": str(args.config),
        "steps": args.steps,
        "batch_size": cfg.train.batch_size,
        "delta_batch": args.delta_batch or cfg.train.delta_batch,
        "generator": cfg.train.generator,
        "variants": {},
    }
    datasets: dict[str, TeacherDataset] = {}
    for name in names:
        over = {**chosen[name], "steps": args.steps, "save_every": args.steps, "warmup_steps": 0, "seed": 0}
        if args.delta_batch:
            over["delta_batch"] = args.delta_batch
        tcfg = model_validate_or_raise(TrainConfig, deep_merge(base, over), f"variant {name}")
        key = f"{tcfg.probes}|{tcfg.representation}"
        delta_seconds = None
        if key not in datasets:
            datasets.clear()  # one probe set's teachers at a time: each preloads every training adapter (GBs)
            probes = resolve_probes(tcfg.probes, tasks, backbone.tokenizer)
            t0 = time.perf_counter()
            rep = compute_deltas(backbone, sources_from_manifest(zoo_dir), probes, tcfg.representation, cache)
            delta_seconds = round(time.perf_counter() - t0, 1)
            report.setdefault("teacher_delta", {})[tcfg.probes] = {"seconds": delta_seconds, **rep.counts()}
            datasets[key] = TeacherDataset(
                zoo_dir,
                conditioner,
                DeltaSpec.for_backbone(backbone, probes, tcfg.representation),
                split="train",
                heldout=cfg.heldout,
                cache=cache,
                arch=backbone.arch,
                task_probes=probes if isinstance(probes, TaskProbes) else None,
            )
        work = args.work / name
        shutil.rmtree(work, ignore_errors=True)
        train_generator(tcfg, datasets[key], backbone, work, tasks=tasks, progress=True)
        log = read_log(work / "log.jsonl")
        steps = [log[s]["step_seconds"] for s in sorted(log)][1:]
        report["variants"][name] = {
            "changes": chosen[name],
            "median_step_seconds": statistics.median(steps),
            "step_seconds": [round(s, 3) for s in steps],
        }
        print(f"[loss_cost] {name}: median {statistics.median(steps):.2f} s/step", flush=True)
        _write(report, args.out)  # after every variant: a kill (or the OOM killer) keeps what was measured


def _write(report: dict, out: Path) -> None:
    ref = report["variants"].get("weight_only", {}).get("median_step_seconds")
    for v in report["variants"].values():
        v["ratio_to_weight_only"] = v["median_step_seconds"] / ref if ref else None
    write_json(out.with_suffix(".json"), report)
    atomic_write_bytes(out.with_suffix(".md"), _markdown(report).encode())


def _markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Step cost of each training loss",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Machine: {m['cpu']} ({m['cpu_capability']}), {m['torch_threads']} torch threads, torch {m['torch']}; "
        f"fp32 generator and Δ. Preset {r['config']}: {r['generator']} generator, batch {r['batch_size']}, Δ and KL "
        f"on the first {r['delta_batch']} adapters of a batch; median over steps 2..{r['steps']} of one run each.",
        "",
        "| variant | changes to the preset | median s/step | × weight-only |",
        "|---|---|---:|---:|",
    ]
    for name, v in r["variants"].items():
        ratio = v["ratio_to_weight_only"]
        lines.append(
            f"| {name} | `{json.dumps(v['changes'])}` | {v['median_step_seconds']:.2f} | "
            f"{'—' if ratio is None else f'{ratio:.1f}'} |"
        )
    lines += ["", "Teacher Δ per probe set (computed now, or read from the cache):", ""]
    for probes, t in r.get("teacher_delta", {}).items():
        lines.append(f"- {probes}: {t['seconds']} s ({t['computed']} computed, {t['cached']} cached)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
