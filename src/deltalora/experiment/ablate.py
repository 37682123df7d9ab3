"""``deltalora ablate``: one factor at a time around a run's Δ-augmented config — λ, probe set,
representation, Δ loss and, when the grid names them, the KL tether, the weight loss's scale (0: B1, Δ-only) and the
norm penalty — each variant a generator trained on the run's zoo and split, scored by the
Δ-cosine of its adapters for the held-out tasks to the oracle in one common Δ space (the run's probes and
representation, so variants trained on other probes stay comparable), and optionally by accuracy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..deltas import DeltaProbe
from ..generators.checkpoint import load_generator
from ..paths import atomic_write_bytes
from ..training import LambdaSchedule, train_generator
from ..training.logs import read_log, tail_mean, values
from .candidates import generate
from .config import AblationConfig, load_run_config
from .markdown import ablation_table
from .run import dataset_for, delta_cosines, prepare, score


def variants(cfg: AblationConfig, base) -> list[tuple[str, str, object, object]]:
    """(name, factor, value, train config) for the centre and every one-factor change of it."""
    t = base.train.model_copy(update={"seed": cfg.seed})
    out = [("centre", "-", "-", t)]
    for v in cfg.grid.lam:
        if v != t.lam.target:
            out.append(
                (
                    f"lam={v:g}",
                    "λ",
                    v,
                    t.model_copy(
                        update={
                            "lam": LambdaSchedule(
                                target=v, warmup_steps=t.lam.warmup_steps, ramp_steps=t.lam.ramp_steps
                            )
                        }
                    ),
                )
            )
    for v in cfg.grid.kl:
        if v != t.kl.target:
            kl = LambdaSchedule(target=v, warmup_steps=t.lam.warmup_steps, ramp_steps=t.lam.ramp_steps)
            out.append((f"kl={v:g}", "KL tether", v, t.model_copy(update={"kl": kl})))
    for factor, key, grid in (
        ("probes", "probes", cfg.grid.probes),
        ("representation", "representation", cfg.grid.representation),
        ("Δ loss", "delta_loss", cfg.grid.delta_loss),
        ("weight loss scale", "weight_scale", cfg.grid.weight_scale),
        ("norm penalty", "norm_penalty", cfg.grid.norm_penalty),
    ):
        for v in grid:
            if v != getattr(t, key):
                out.append((f"{key}={v}", factor, v, t.model_copy(update={key: v})))
    return out


def run_ablation(cfg: AblationConfig, out: str | Path, progress: bool = True, backbone=None) -> Path:
    """Train every variant into ``out/<name>``, write ``out/ablation.md`` and ``ablation.json``; returns the .md
    path."""
    out = Path(out)
    run_cfg = load_run_config(cfg.run)
    ctx = prepare(run_cfg, out / "run", progress, backbone)
    probe = DeltaProbe(ctx.backbone, ctx.train_set.task_probes or run_cfg.train.probes, run_cfg.train.representation)
    shared = ctx.train_set.mean_delta()
    rows = []
    for name, factor, value, tcfg in variants(cfg, run_cfg):
        t0 = time.perf_counter()
        res = train_generator(
            tcfg,
            dataset_for(ctx, tcfg),
            ctx.backbone,
            out / name,
            progress=progress,
            meta={"encoder": tcfg.encoder, "heldout_tasks": ctx.heldout},
            tasks=ctx.tasks,
        )
        gen = load_generator(res.generator, ctx.backbone.device).gen
        cosines, specific, accs = [], [], []
        for task in ctx.heldout:
            conds = torch.stack(
                [
                    ctx.conditioner.sample(task, seed=cfg.seed, epoch=0, key=f"heldout/{j}")
                    for j in range(run_cfg.adapters_per_seed)
                ]
            )
            candidates = {f"{name}/g{j}": ("gen", w) for j, w in enumerate(generate(gen, conds))}
            cos, scos, _, _ = delta_cosines(ctx, probe, task, candidates, shared)
            cosines += list(cos.values())
            specific += list(scos.values())
            if cfg.evaluate:
                accs += [r["accuracy"] for r in score(ctx, task, candidates).values()]
        curves = read_log(out / name / "log.jsonl")
        rows.append(
            {
                "variant": name,
                "factor": factor,
                "value": value,
                "tail_loss_weights": tail_mean(curves, "loss_weights"),
                "tail_train_delta_cosine": tail_mean(curves, "delta_cosine"),
                "train_seconds": round(sum(values(curves, "step_seconds")), 1),
                "heldout_delta_cosine_mean": float(np.mean(cosines)),
                "heldout_delta_cosine_std": float(np.std(cosines)),
                "heldout_specific_cosine_mean": float(np.mean(specific)),
                "heldout_specific_cosine_std": float(np.std(specific)),
                "heldout_accuracy_mean": float(np.mean(accs)) if accs else None,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        if progress:
            print(f"[ablate] {name}: held-out Δ-cosine {rows[-1]['heldout_delta_cosine_mean']:.3f}")
    lines = [
        f"# Ablation around `{Path(cfg.run).name}` (seed {cfg.seed})",
        "",
        f"Held-out tasks: {', '.join(ctx.heldout)}. Δ-cosine to the oracle is measured in the run's space "
        f"({run_cfg.train.probes}, {run_cfg.train.representation}) for every variant; the task-specific one after "
        "projecting the training teachers' mean Δ out of both.",
        "",
        "L_weights and the training Δ-cosine are means over the last 10 % of the steps (one step's value is one "
        "batch's); "
        "training s sums the logged step times; seconds is this call's wall time for the variant.",
        "",
    ] + ablation_table(rows)
    atomic_write_bytes(
        out / "ablation.json",
        json.dumps({"config": json.loads(cfg.model_dump_json()), "rows": rows}, indent=2).encode(),
    )
    atomic_write_bytes(out / "ablation.md", "\n".join(lines).encode())  # the table's lines end with an empty one
    return out / "ablation.md"


__all__ = ["run_ablation", "variants"]
