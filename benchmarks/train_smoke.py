"""A few generator steps of a run preset on a real backbone on CPU, with and without the Δ loss.

    python benchmarks/train_smoke.py --config configs/qwen2.5-1.5b-dnd.yaml            # packaged 1.5B weights
    python benchmarks/train_smoke.py --config configs/qwen2.5-1.5b-dnd.yaml \\
        --backbone tiny-qwen2 --encoder tiny-encoder --results /tmp/smoke                 # seconds: self-check

Building a real zoo for the 1.5B preset takes hours on CPU, so the teachers here are synthetic, in the
preset's LoRA layout (the zoo YAML's ``teacher.lora``): A as PEFT initialises it (uniform ±1/√in) and
B ~ N(0, σ), with σ calibrated so that the teachers' |Δ| / |v(B)| matches ``--target-rel`` (default:
the median of the real demo-zoo teachers on qwen2.5-coder-0.5b, see results/delta_precision.md), or
given with ``--sigma``. They are saved as a zoo (manifest + PEFT directories) under ``--out``, their Δ
computed with ``compute_deltas``, and they are assigned round-robin to a few real tasks of the default
suite, whose condition splits are encoded by the preset's encoder. Then ``train_generator`` runs twice
with the preset's TrainConfig, overriding only steps / lam / save_every / warmup_steps and, by
default, the batch sizes (below):

(a) λ = 0 (weight loss only, as DnD);
(b) λ = 1 from step 0: the Δ loss on the first ``delta_batch`` generated adapters at every step
    (forward + backward of the backbone over the probes with the generated LoRA injected).

Batch sizes. The preset's batch 16 does not fit a few-minute smoke on 2 CPU cores: its HyperConv's last
layer (925 -> 4508 planes, 3x3 kernel over an 18 x 258 token grid) costs ~3.5e11 FLOP forward per
generated adapter, about as much as the 1.5B backbone's probe forward for one adapter, so one weight-only
step at batch 16 took ~9.5 minutes on this (shared) machine. The smoke therefore runs ``--batch-size 2
--delta-batch 2`` by default (``--batch-size 16 --delta-batch 4`` is the preset, ~1 h for both runs) and
extrapolates the preset's step linearly from the per-adapter costs it measures: generator
(weight-only step / batch) and Δ loss ((Δ step − weight-only step) / delta_batch).

Writes results/<name>.md|json: median step time of both runs (their difference is the cost of the Δ
loss), the extrapolated preset step, generator and LoRA parameter counts, forward FLOP per adapter of
the generator and of the probe forward, backbone load time, peak RSS after each phase.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import command_line, machine, write_json  # noqa: E402
from deltalora.backbones import (
    load_backbone,  # noqa: E402
    packaged,  # noqa: E402
)
from deltalora.backbones.registry import get_spec, is_registered  # noqa: E402
from deltalora.conditions import Conditioner, load_encoder, pools_from_tasks  # noqa: E402
from deltalora.config import RuntimeConfig  # noqa: E402
from deltalora.deltas import DeltaCache, DeltaProbe, DeltaSpec, compute_deltas, get_probe_set, sources_from_manifest  # noqa: E402
from deltalora.deltas.represent import encode_probes  # noqa: E402
from deltalora.experiment import load_run_config  # noqa: E402
from deltalora.generators.registry import num_parameters  # noqa: E402
from deltalora.lora import (  # noqa: E402
    LoraWeights,
    derive_layout,  # noqa: E402
    save_adapter,
)
from deltalora.tasks import build_task, load_suite  # noqa: E402
from deltalora.tasks.suite import get_spec as get_task_spec  # noqa: E402
from deltalora.training import LambdaSchedule, TeacherDataset, train_generator  # noqa: E402
from deltalora.training.loop import LOG_NAME  # noqa: E402
from deltalora.zoo import ZooEntry, append_entry, file_sha256, load_zoo_config  # noqa: E402
from deltalora.zoo.train import peft_init  # noqa: E402

DNDS_LORA_PARAMS = (
    18_464_768  # DnD teachers: r16 on all 7 projections of Qwen2.5-1.5B = 28 layers x 16 x 41,216 (sum of in+out)
)
# Median |Δ| / |v(B)| of the real demo-zoo teachers (qwen2.5-coder-0.5b-instruct, r8 all 7, 10-20 steps, generic5,
# last token, fp32): 58.5 / 160.3, results/delta_precision.json ("summary"."rel_delta_fp32_median").
REAL_TEACHER_REL_DELTA = 0.365


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def synthetic_teacher(layout, seed: int, sigma: float) -> LoraWeights:
    """PEFT's A init (uniform ±1/√in) and B ~ N(0, σ): a non-zero ΔW in the preset's layout."""
    g = torch.Generator().manual_seed(seed)
    w = peft_init(layout, g)
    B = {s.key: torch.randn(s.b_shape, generator=g) * sigma for s in layout.slots}
    return LoraWeights(layout, w.A, B)


def generator_forward_flop(cfg, dataset) -> int:
    """FLOP of one generated adapter's forward (torch's FlopCounterMode on a batch of one, no grad)."""
    from torch.utils.flop_counter import FlopCounterMode

    from deltalora.generators import build_generator

    gen = build_generator(
        cfg.generator, dataset.layout, cond_dim=dataset.cond_dim, n_prompts=cfg.n_prompts, **cfg.generator_options
    )
    cond = dataset.example(0, 0).condition[None]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        gen(cond)
    return int(counter.get_total_flops())


def median_steps(run_dir: Path) -> tuple[float, list[float], list[dict]]:
    recs = [json.loads(line) for line in (run_dir / LOG_NAME).read_text().splitlines() if line.strip()]
    times = [r["step_seconds"] for r in recs]
    return statistics.median(times), times, recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/qwen2.5-1.5b-dnd.yaml", help="run preset (configs/*.yaml)")
    ap.add_argument(
        "--backbone",
        default="qwen2.5-coder-1.5b-instruct",
        help="backbone in place of the zoo YAML's (a hub id there; the packaged weights here)",
    )
    ap.add_argument(
        "--dtype",
        default="float32",
        help=(
            "backbone weights dtype (the teachers here are synthetic, "
            "so the zoo YAML's teacher.precision does not apply)"
        ),
    )
    ap.add_argument(
        "--encoder", default=None, help="condition encoder in place of the preset's (tiny-encoder for the self-check)"
    )
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--teachers", type=int, default=6)
    ap.add_argument(
        "--tasks",
        default="rg_spell_backward,rg_chain_sum,bb_plural",
        help="tasks of the preset's suite whose condition pools condition the teachers (round-robin)",
    )
    ap.add_argument("--batch-size", type=int, default=2, help="teachers per step (0 = the preset's; see the docstring)")
    ap.add_argument("--delta-batch", type=int, default=2, help="Δ-matched adapters per step (0 = the preset's)")
    ap.add_argument(
        "--sigma", type=float, default=None, help="σ of the teachers' B (default: calibrated to --target-rel)"
    )
    ap.add_argument(
        "--target-rel", type=float, default=REAL_TEACHER_REL_DELTA, help="target |Δ| / |v(B)| of the teachers"
    )
    ap.add_argument("--out", default="runs/train-smoke")
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--name", default="train_smoke")
    args = ap.parse_args()

    t_all = time.perf_counter()
    load_before = os.getloadavg()
    run_cfg = load_run_config(args.config)
    zoo_cfg = load_zoo_config(run_cfg.zoo)
    lora_spec = zoo_cfg.teacher.lora
    base_train = run_cfg.train
    if args.encoder:
        base_train = base_train.model_copy(update={"encoder": args.encoder})
    preset_batch, preset_delta_batch = base_train.batch_size, base_train.delta_batch
    batch = {"batch_size": args.batch_size or preset_batch, "delta_batch": args.delta_batch or preset_delta_batch}
    base_train = base_train.model_copy(update=batch)
    out = Path(args.out)
    for sub in ("zoo", "deltas", "lam0", "lam1"):  # fresh: a finished run dir would be reused, not timed
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    rss: dict[str, float] = {}

    # ---------------------------------------------------------------- backbone
    spec = get_spec(args.backbone) if is_registered(args.backbone) else None
    was_cached = spec is None or spec.kind == "tiny" or packaged.is_cached(spec)
    t0 = time.perf_counter()
    backbone = load_backbone(args.backbone, RuntimeConfig(device="cpu", dtype=args.dtype))
    load_call_s = time.perf_counter() - t0
    rss["after backbone load"] = peak_rss_gib()
    layout = derive_layout(backbone.arch, lora_spec)
    print(
        f"[smoke] {args.backbone}: loaded in {load_call_s:.1f} s (fetch included: {not was_cached}); "
        f"LoRA r{lora_spec.rank} α{lora_spec.alpha:g} on {','.join(lora_spec.targets)}: {layout.num_params:,} params",
        flush=True,
    )

    # ---------------------------------------------------------------- synthetic teachers
    t0 = time.perf_counter()
    probe = DeltaProbe(backbone, base_train.probes, base_train.representation, "float32")
    base_norm = float(probe.base.norm())
    calibration = None
    sigma = args.sigma
    if sigma is None:
        # |Δ| grows ~linearly in σ for small B: measure the mean |Δ| of two calibration adapters at σ0, rescale to the
        # target; if that misses by > 10 %, fit |Δ| ∝ σ^p through the two points and take one more step.
        target = args.target_rel * base_norm

        def mean_norm(probe: DeltaProbe, s: float) -> float:
            with torch.no_grad():
                d = probe(LoraWeights.stack([synthetic_teacher(layout, i, s) for i in range(min(2, args.teachers))]))
            return float(d.norm(dim=-1).mean())

        points = [(1e-3, mean_norm(probe, 1e-3))]
        sigma = points[0][0] * target / points[0][1]
        points.append((sigma, mean_norm(probe, sigma)))
        if abs(points[1][1] / target - 1) > 0.1:
            (s0, n0), (s1, n1) = points
            p = math.log(n1 / n0) / math.log(s1 / s0)
            sigma = s1 * (target / n1) ** (1 / p)
        calibration = {
            "points_sigma_mean_delta_norm": points,
            "target_rel": args.target_rel,
            "target_delta_norm": target,
        }
        print(
            f"[smoke] |v(B)| = {base_norm:.1f}; calibration (σ, mean |Δ|): "
            + ", ".join(f"({s:.3g}, {n:.2f})" for s, n in points)
            + f" -> σ = {sigma:.3g} for |Δ| ≈ {args.target_rel:.3f}·|v(B)| = {target:.1f}",
            flush=True,
        )
    del probe
    suite = load_suite(zoo_cfg.suite)
    task_names = [t for t in args.tasks.split(",") if t]
    task_specs = [get_task_spec(suite, t) for t in task_names]
    zoo = out / "zoo"
    assignment = {}
    for i in range(args.teachers):
        ts = task_specs[i % len(task_specs)]
        seed = i // len(task_specs)
        path = f"{ts.name}/s{seed}"
        save_adapter(synthetic_teacher(layout, 1000 + i, sigma), zoo / path)
        append_entry(
            zoo,
            ZooEntry(
                id=path,
                task=ts.name,
                family=ts.family,
                seed=seed,
                path=path,
                sha256=file_sha256(zoo / path / "adapter_model.safetensors"),
                backbone=backbone.name,
                extra={"synthetic": True, "sigma": sigma},
            ),
        )
        assignment[path] = ts.name
    cache = DeltaCache(out / "deltas")
    t1 = time.perf_counter()
    report = compute_deltas(
        backbone,
        sources_from_manifest(zoo),
        base_train.probes,
        base_train.representation,
        cache,
        batch_adapters=run_cfg.delta_batch_adapters,
    )
    delta_s = time.perf_counter() - t1
    if report.broken:
        raise SystemExit(f"non-finite Δ for {[r.id for r in report.broken]}; lower --sigma")
    norms = {r.id: r.norm for r in report.results}
    zoo_s = time.perf_counter() - t0
    rss["after teachers + Δ"] = peak_rss_gib()
    print(
        f"[smoke] {args.teachers} teachers (σ={sigma:.3g}): |Δ| {min(norms.values()):.2f}–{max(norms.values()):.2f} "
        f"(median {statistics.median(norms.values()):.2f}), "
        f"|Δ|/|v(B)| median {statistics.median(norms.values()) / base_norm:.3f}; "
        f"Δ of all teachers {delta_s:.1f} s",
        flush=True,
    )

    # ---------------------------------------------------------------- conditions + dataset
    t0 = time.perf_counter()
    tasks = {s.name: build_task(s, seed=zoo_cfg.split_seed) for s in task_specs}
    encoder = load_encoder(base_train.encoder, RuntimeConfig(device="cpu"))
    conditioner = Conditioner(
        encoder, pools_from_tasks(tasks.values()), base_train.n_prompts, base_train.condition_form
    )
    dspec = DeltaSpec.for_backbone(backbone, base_train.probes, base_train.representation)
    dataset = TeacherDataset(zoo, conditioner, dspec, split="train", cache=cache, arch=backbone.arch)
    cond_s = time.perf_counter() - t0
    rss["after conditions"] = peak_rss_gib()

    # ---------------------------------------------------------------- FLOP per adapter: generator vs probe forward
    gen_flop = generator_forward_flop(base_train, dataset)
    enc = encode_probes(backbone.tokenizer, get_probe_set(base_train.probes).texts)
    probe_tokens = int(enc["input_ids"].numel())
    nonembed = sum(p.numel() for n, p in backbone.model.model.named_parameters() if "embed_tokens" not in n)
    probe_flop = 2 * (nonembed + layout.num_params) * probe_tokens  # dense matmuls over the padded probe batch
    print(
        f"[smoke] forward FLOP per adapter: generator {gen_flop:.3g}, probe forward {probe_flop:.3g} "
        f"({probe_tokens} padded probe tokens)",
        flush=True,
    )

    # ---------------------------------------------------------------- the two runs
    common = {"steps": args.steps, "save_every": args.steps, "warmup_steps": 0}
    arms = {
        "lam0": base_train.model_copy(update={**common, "lam": LambdaSchedule()}),
        "lam1": base_train.model_copy(
            update={**common, "lam": LambdaSchedule(target=1.0, warmup_steps=0, ramp_steps=0)}
        ),
    }
    runs = {}
    gen_params = None
    for arm, cfg in arms.items():
        print(
            f"[smoke] {arm}: {cfg.steps} steps, batch {cfg.batch_size}, "
            f"Δ batch {cfg.delta_batch if cfg.uses_delta else 0}",
            flush=True,
        )
        res = train_generator(cfg, dataset, backbone, out / arm, meta={"encoder": cfg.encoder}, progress=False)
        med, times, recs = median_steps(out / arm)
        gen_params = num_parameters(res.module)
        rss[f"after {arm}"] = peak_rss_gib()
        runs[arm] = {
            "median_step_s": med,
            "step_s": times,
            "train_call_s": round(res.seconds, 2),
            "last": {
                k: recs[-1].get(k)
                for k in (
                    "loss",
                    "loss_weights",
                    "loss_delta",
                    "delta_cosine",
                    "delta_norm_pred",
                    "delta_norm_teacher",
                    "lambda",
                    "grad_norm",
                )
            },
            "losses": [r["loss"] for r in recs],
        }
        print(
            f"[smoke] {arm}: median step {med:.2f} s (steps {', '.join(f'{t:.2f}' for t in times)}), "
            f"peak RSS {rss[f'after {arm}']:.2f} GiB",
            flush=True,
        )
        del res

    # ---------------------------------------------------------------- report
    d = arms["lam1"].delta_batch
    delta_cost = runs["lam1"]["median_step_s"] - runs["lam0"]["median_step_s"]
    b = arms["lam0"].batch_size
    gen_per_adapter = runs["lam0"]["median_step_s"] / b
    preset_step = {
        "weight_only": gen_per_adapter * preset_batch,
        "with_delta": gen_per_adapter * preset_batch + delta_cost / d * preset_delta_batch,
    }
    total_s = time.perf_counter() - t_all
    lora_ok = (
        layout.num_params == DNDS_LORA_PARAMS
        if backbone.arch.num_hidden_layers == 28 and backbone.arch.hidden_size == 1536
        else None
    )
    summary = {
        "config": args.config,
        "backbone": args.backbone,
        "backbone_dtype": args.dtype,
        "weights_id": backbone.weights_id,
        "encoder": base_train.encoder,
        "lora": lora_spec.model_dump(mode="json"),
        "lora_params": layout.num_params,
        "lora_params_match_dnd": lora_ok,
        "generator": base_train.generator,
        "generator_options": base_train.generator_options,
        "generator_params": gen_params,
        "batch_size": base_train.batch_size,
        "delta_batch": d,
        "preset_batch_size": preset_batch,
        "preset_delta_batch": preset_delta_batch,
        "generator_forward_flop_per_adapter": gen_flop,
        "probe_forward_flop_per_adapter": probe_flop,
        "probe_padded_tokens": probe_tokens,
        "generator_step_s_per_adapter": gen_per_adapter,
        "preset_step_s_extrapolated": preset_step,
        "n_prompts": base_train.n_prompts,
        "weight_loss": base_train.weight_loss,
        "token_weighting": base_train.token_weighting,
        "steps": args.steps,
        "teachers": args.teachers,
        "tasks": task_names,
        "assignment": assignment,
        "sigma": sigma,
        "sigma_calibration": calibration,
        "base_norm": base_norm,
        "teacher_delta_norms": norms,
        "teacher_delta_norm_median": statistics.median(norms.values()),
        "teacher_rel_delta_median": statistics.median(norms.values()) / base_norm,
        "load_seconds": round(load_call_s, 2),
        "load_included_fetch": not was_cached,
        "teachers_and_delta_seconds": round(zoo_s, 2),
        "teacher_delta_seconds": round(delta_s, 2),
        "conditions_seconds": round(cond_s, 2),
        "median_step_s_weight_only": runs["lam0"]["median_step_s"],
        "median_step_s_with_delta": runs["lam1"]["median_step_s"],
        "delta_loss_cost_per_step_s": delta_cost,
        "delta_loss_cost_per_adapter_s": delta_cost / d,
        "peak_rss_gib": rss,
        "total_seconds": round(total_s, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    write_json(
        args.results / f"{args.name}.json",
        {"command": command_line(), "machine": machine(), "summary": summary, "runs": runs},
    )

    s = summary
    fetch_note = " (including the first fetch of the packaged weights)" if s["load_included_fetch"] else ""
    rows = [
        ("λ = 0 (weight loss only)", runs["lam0"]),
        (f"λ = 1 from step 0 (Δ loss on {d} adapters / step)", runs["lam1"]),
    ]
    md = [
        f"# Generator training smoke: {Path(args.config).name} on {args.backbone} (CPU)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine()}; load average before {s['load_average_before']}, after {s['load_average_after']}.",
        "",
        f"Preset `{args.config}` ({base_train.generator} generator, {base_train.weight_loss} weight loss"
        f"{' with criterion weights' if base_train.token_weighting and base_train.weight_loss == 'tokens' else ''}, "
        f"{base_train.delta_loss} Δ loss, {base_train.n_prompts} prompts per condition, "
        f"encoder `{base_train.encoder}`, probes `{base_train.probes}` / `{base_train.representation}` in "
        f"{base_train.probe_dtype}); TrainConfig overridden only in steps={args.steps}, lam, save_every={args.steps}, "
        f"warmup_steps=0, batch_size={b} (preset {preset_batch}), delta_batch={d} (preset {preset_delta_batch})"
        f"{'' if args.encoder is None else f' and encoder={args.encoder}'}. Backbone `{args.backbone}` in {args.dtype} "
        f"(in place of the zoo YAML's `{zoo_cfg.backbone}`).",
        "",
        f"- LoRA r{lora_spec.rank} α{lora_spec.alpha:g} on {','.join(lora_spec.targets)}: "
        f"**{layout.num_params:,} parameters** per adapter"
        + ("" if lora_ok is None else f" ({'=' if lora_ok else '≠'} DnD's {DNDS_LORA_PARAMS:,})")
        + ".",
        f"- Generator: **{gen_params:,} parameters** "
        f"({base_train.generator}, options {base_train.generator_options or 'default'}).",
        f"- Forward FLOP per adapter: generator {gen_flop:.3g} (FlopCounterMode, batch of one) vs the probe "
        f"forward of the backbone {probe_flop:.3g} (2 × {nonembed + layout.num_params:,} non-embedding + "
        f"LoRA params × {probe_tokens} padded probe tokens); backward ≈ 2× forward for both.",
        f"- Backbone load: {s['load_seconds']:.1f} s{fetch_note}.",
        f"- Teachers: {args.teachers} synthetic adapters (A uniform ±1/√in as PEFT inits it, B ~ N(0, σ={sigma:.3g})), "
        f"round-robin over {', '.join(task_names)}. σ "
        + (
            "calibrated on two adapters, (σ, mean |Δ|) = "
            + ", ".join(f"({a:.3g}, {b:.2f})" for a, b in calibration["points_sigma_mean_delta_norm"])
            + f", for |Δ|/|v(B)| = {args.target_rel} (the median of the real demo-zoo teachers on the 0.5B, "
            "results/delta_precision.md)"
            if calibration
            else "given"
        )
        + f". Measured: |v(B)| = {base_norm:.1f}, teacher |Δ| {min(norms.values()):.2f}–{max(norms.values()):.2f} "
        f"(median {s['teacher_delta_norm_median']:.2f}, |Δ|/|v(B)| = {s['teacher_rel_delta_median']:.3f}); their Δ "
        f"(compute_deltas, {run_cfg.delta_batch_adapters} adapters per forward) took {delta_s:.1f} s.",
        "",
        "| run | median step s | steps (s) | last loss_weights | last loss_delta | last Δ-cosine |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for label, r in rows:
        last = r["last"]
        fmt = lambda v: "–" if v is None else f"{v:.4g}"  # noqa: E731
        md.append(
            f"| {label} | {r['median_step_s']:.2f} | {', '.join(f'{t:.2f}' for t in r['step_s'])} | "
            f"{fmt(last['loss_weights'])} | {fmt(last['loss_delta'])} | {fmt(last['delta_cosine'])} |"
        )
    md += [
        "",
        f"**The Δ loss costs {delta_cost:.1f} s per step ({delta_cost / d:.1f} s per Δ-matched adapter)** on top of "
        f"{runs['lam0']['median_step_s']:.1f} s for the weight-only step "
        f"({gen_per_adapter:.1f} s per generated adapter).",
        "",
        f"Extrapolated to the preset's batch {preset_batch} / delta_batch {preset_delta_batch} (linear in both): "
        f"weight-only step ≈ {preset_step['weight_only']:.0f} s, with the Δ loss ≈ {preset_step['with_delta']:.0f} s "
        f"(+{100 * (preset_step['with_delta'] / preset_step['weight_only'] - 1):.0f} %).",
        "",
        "Peak RSS (ru_maxrss, cumulative): " + "; ".join(f"{k} {v:.2f} GiB" for k, v in rss.items()) + ".",
        "",
        f"Total wall time {total_s:.0f} s (teachers + Δ {zoo_s:.0f} s, conditions {cond_s:.0f} s).",
    ]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
