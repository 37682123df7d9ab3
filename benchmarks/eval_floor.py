"""How far the evaluator is from the fp32 FLOP floor: the arithmetic behind "twice as fast, predictions identical".

    python benchmarks/eval_floor.py                     # against results/eval_speed.json, its peak from deltas.json
    python benchmarks/eval_floor.py --measure-peak      # measure this machine's fp32 GEMM peak now (idle machine!)

For every task of an ``eval_speed.py`` run (its items, arms and measured *after* seconds), counts the FLOPs no fp32
evaluator can avoid: each arm's forward over the shared prompt prefix once and every item's own prompt tokens
(2 × (non-embedding + LoRA) parameters per token), the LM head on each prompt's last position, and after that the
answer tokens — for multiple choice every choice token after the first (a continuation forward with its LM head),
for short answers at least the reference answer and an end token per item (a lower bound: what an arm really
generates is only known by running it). Attention scores, norms and activations are left out, so the floor is
optimistic. Divided by the machine's fp32 GEMM peak it is the time a perfect implementation would take; the
measured time over it is the most any fp32 change can gain. Writes results/eval_floor.{md,json}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _util import command_line, machine, measured_gemm_peak, write_json
from deltalora.backbones import load_backbone
from deltalora.config import LoraSpec
from deltalora.eval.engine import _shared_prefix
from deltalora.lora import derive_layout
from deltalora.tasks import build_task, format_prompt, get_spec, load_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed", type=Path, default=Path("results/eval_speed.json"), help="an eval_speed.py result")
    ap.add_argument("--peak-from", type=Path, default=Path("results/deltas.json"), help="a result with the peak")
    ap.add_argument("--measure-peak", action="store_true", help="measure the fp32 GEMM peak now instead")
    ap.add_argument("--out", type=Path, default=Path("results/eval_floor"))
    args = ap.parse_args()

    speed = json.loads(args.speed.read_text())
    if args.measure_peak:
        peak, peak_src = measured_gemm_peak(), "measured by this run (2048² fp32 matmul, best of 5)"
    else:
        peak = json.loads(args.peak_from.read_text())["measured_fp32_gemm_peak_gflops"] * 1e9
        peak_src = f"measured by {args.peak_from.name}'s run on the same machine class"
    b = load_backbone(speed["backbone"], progress=False)
    tok = b.tokenizer
    head = sum(p.numel() for p in b.model.get_output_embeddings().parameters())
    embed = sum(p.numel() for p in b.model.get_input_embeddings().parameters())
    total = sum(p.numel() for p in b.model.parameters())
    tied = b.model.get_output_embeddings().weight is b.model.get_input_embeddings().weight
    body = total - embed - (0 if tied else head)  # the parameters every token's forward multiplies by
    layout = derive_layout(b.arch, LoraSpec(rank=8, alpha=16, targets="q,k,v,o,gate,up,down"))  # eval_speed's arms
    lora = sum(s.rank * (s.in_features + s.out_features) for s in layout.slots)
    per_token, per_logit = 2 * (body + lora), 2 * head
    specs = load_suite(None)
    rows = []
    for entry in speed["tasks"]:
        task = build_task(get_spec(specs, entry["task"]))
        items = task.split("eval")[: speed["items"]]
        ids = [tok(format_prompt(tok, task, it), add_special_tokens=False)["input_ids"] for it in items]
        shared = _shared_prefix(ids)
        own = sum(len(i) - shared for i in ids)
        if task.kind == "mc":
            answer = sum(len(tok(c, add_special_tokens=False)["input_ids"]) - 1 for it in items for c in it.choices)
        else:
            answer = sum(len(tok(it.answer, add_special_tokens=False)["input_ids"]) + 1 for it in items)
        arms = speed["arms"]
        flops = arms * ((shared + own) * per_token + len(items) * per_logit + answer * (per_token + per_logit))
        floor = flops / peak
        rows.append(
            {
                "task": entry["task"],
                "kind": task.kind,
                "shared_prefix_tokens": shared,
                "own_tokens_per_item": own / len(items),
                "answer_tokens": answer,
                "gflop": flops / 1e9,
                "floor_s": floor,
                "measured_s": entry["after_s"],
                "fraction_of_floor": floor / entry["after_s"],
                "max_fp32_gain": entry["after_s"] / floor,
            }
        )
    all_floor, all_meas = sum(r["floor_s"] for r in rows), sum(r["measured_s"] for r in rows)
    out = {
        "command": command_line(),
        "machine_now": machine(),
        "speed_run": {"file": str(args.speed), "command": speed["command"], "machine": speed["machine"]},
        "peak_gflops": peak / 1e9,
        "peak_source": peak_src,
        "params": {"body": body, "lm_head": head, "lora_r8_all7": lora},
        "tasks": rows,
        "all": {"floor_s": all_floor, "measured_s": all_meas, "max_fp32_gain": all_meas / all_floor},
    }
    write_json(args.out.with_suffix(".json"), out)
    m = speed["machine"]
    lines = [
        f"# Evaluator against its fp32 FLOP floor ({speed['backbone']}, {speed['items']} items × {speed['arms']} arms)",
        "",
        f"Command: `{out['command']}`  ",
        f"Measured times: `{speed['command']}` ({args.speed.name}; {m['cpu']}, capability {m['cpu_capability']}, "
        f"{m['torch_threads']} threads, float32).  ",
        f"Peak: {peak / 1e9:.0f} GFLOP/s fp32, {peak_src}.",
        "",
        f"Per token {per_token / 1e9:.2f} GFLOP (2 × ({body:,} body + {lora:,} LoRA) parameters); per LM-head row "
        f"{per_logit / 1e9:.2f} GFLOP. Short-answer floors count only the reference answer + 1 token per item.",
        "",
        "| task | kind | shared prefix | own tokens / item | answer tokens | floor (s) | measured (s) | "
        "of floor | most an fp32 change can gain |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['kind']} | {r['shared_prefix_tokens']} | {r['own_tokens_per_item']:.1f} | "
            f"{r['answer_tokens']} | {r['floor_s']:.1f} | {r['measured_s']:.1f} | {r['fraction_of_floor'] * 100:.0f} % "
            f"| {r['max_fp32_gain']:.2f}× |"
        )
    lines += [
        f"| **all** | | | | | {all_floor:.1f} | {all_meas:.1f} | {all_floor / all_meas * 100:.0f} % | "
        f"{all_meas / all_floor:.2f}× |",
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
