"""K adapters in one batched forward vs K separate forwards, through deltalora's hook injection.

    python benchmarks/injection.py --backbone qwen2.5-coder-0.5b-instruct --k 8 --repeats 5

Measures hidden-state forwards (the decoder without its LM head: what delta activations need) of
P probe prompts under K random LoRA adapters, fp32, no grad, and writes results/injection.{md,json}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _util import command_line, machine, median_time, write_json
from deltalora.backbones import load_backbone
from deltalora.config import LoraSpec, RuntimeConfig
from deltalora.deltas.probes import get_probe_set
from deltalora.lora import LoraWeights, derive_layout, inject


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="q,k,v,o,gate,up,down")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--probes", default="generic5", help="probe set name or file")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args()

    PROBES = list(get_probe_set(args.probes).texts)
    b = load_backbone(args.backbone, RuntimeConfig(device=args.device, dtype=args.dtype))
    layout = derive_layout(b.arch, LoraSpec(rank=args.rank, alpha=2 * args.rank, targets=args.targets))
    adapters = LoraWeights.random(layout, num_adapters=args.k, std=0.02, seed=0).to(b.device)
    singles = [adapters.select(i) for i in range(args.k)]
    b.tokenizer.padding_side = "left"
    enc = b.tokenizer(PROBES, return_tensors="pt", padding=True).to(b.device)
    big = {k: v.repeat(args.k, 1) for k, v in enc.items()}  # adapter-major: K blocks of P rows
    decoder = b.model.model

    @torch.no_grad()
    def batched():
        with inject(b.model, adapters):
            return decoder(**big).last_hidden_state[:, -1]

    @torch.no_grad()
    def separate():
        outs = []
        for w in singles:
            with inject(b.model, w):
                outs.append(decoder(**enc).last_hidden_state[:, -1])
        return torch.cat(outs)

    diff = (batched() - separate()).abs().max().item()
    t_sep, sep_all = median_time(separate, args.repeats)
    t_bat, bat_all = median_time(batched, args.repeats)
    tokens = int(enc["attention_mask"].sum()) * args.k
    padded = enc["input_ids"].numel() * args.k
    nonembed = sum(p.numel() for n, p in decoder.named_parameters() if "embed_tokens" not in n)
    flops = 2 * nonembed * padded  # dense matmul FLOPs of the padded batch (attention scores excluded)
    res = {
        "command": command_line(),
        "machine": machine(),
        "backbone": args.backbone,
        "dtype": args.dtype,
        "k": args.k,
        "probes": len(PROBES),
        "padded_tokens_per_adapter": enc["input_ids"].numel(),
        "real_tokens_total": tokens,
        "lora": {"rank": args.rank, "targets": args.targets, "params_per_adapter": layout.num_params},
        "separate_s_median": t_sep,
        "batched_s_median": t_bat,
        "separate_s_all": sep_all,
        "batched_s_all": bat_all,
        "speedup": t_sep / t_bat,
        "max_abs_diff_batched_vs_separate": diff,
        "batched_gflops_per_s": flops / t_bat / 1e9,
        "separate_gflops_per_s": flops / t_sep / 1e9,
    }
    write_json(args.out / "injection.json", res)
    md = f"""# Batched injection: K={args.k} adapters in one forward vs {args.k} separate forwards

Command: `{res["command"]}`
Machine: {res["machine"]}

Backbone `{args.backbone}`, {args.dtype}, LoRA r{args.rank} on {args.targets} \
({layout.num_params:,} params per adapter),
{len(PROBES)} `{args.probes}` probes left-padded to {enc["input_ids"].shape[1]} tokens, \
decoder hidden states only (no LM head), no grad.

| path | median s (of {args.repeats}) | all runs | GFLOP/s (dense, padded) |
|---|---|---|---|
| {args.k} separate forwards ({len(PROBES)} rows each) | {t_sep:.3f} | {", ".join(f"{t:.3f}" for t in sep_all)} \
| {res["separate_gflops_per_s"]:.0f} |
| 1 batched forward ({args.k * len(PROBES)} rows) | {t_bat:.3f} | {", ".join(f"{t:.3f}" for t in bat_all)} \
| {res["batched_gflops_per_s"]:.0f} |

Speedup {res["speedup"]:.2f}x; max |batched - separate| = {diff:.2e}.
"""
    (args.out / "injection.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
