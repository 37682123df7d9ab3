"""Evaluator throughput: routed adapters in greedy decoding, and the shared prompt prefix on real tasks.

    python benchmarks/eval_speed.py --backbone qwen2.5-coder-0.5b-instruct --rows 32 --new-tokens 17 --repeats 3

The evaluator scores an arm's rows through ``inject(..., rows=...)``. Two routed layouts are timed on the
same batch: rows grouped by adapter (one dense matmul pair per adapter, the default whenever adapters
serve >= GROUP_MIN_ROWS rows each) and a per-row gather of A and B (what the router does for many adapters
over few rows). Reports the prompt forward (one new token) and the per-token decode time, medians of
``--repeats``.

Then, on the first ``--items`` eval items of each ``--prefix-tasks`` task (chat-formatted, base + one adapter),
``evaluate_task`` with the shared prompt prefix run once per arm and batch (the default) against every row
running its whole prompt; the predictions of both must be identical. Writes results/eval_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _util import command_line, machine, median_time, write_json
from deltalora.backbones import load_backbone
from deltalora.config import LoraSpec, RuntimeConfig
from deltalora.eval import engine, evaluate_task, greedy_generate
from deltalora.lora import LoraWeights
from deltalora.lora import injection
from deltalora.tasks import build_task, format_prompt, get_spec, load_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=17)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="q,k,v,o,gate,up,down")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prefix-tasks", default="rg_word_sequence_reversal,rg_family_relationships,bb_navigate")
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--prefix-repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args()

    b = load_backbone(args.backbone, RuntimeConfig(device=args.device, dtype=args.dtype))
    layout = b.layout(LoraSpec(rank=args.rank, alpha=2 * args.rank, targets=args.targets))
    w = LoraWeights.random(layout, std=0.02, seed=0)
    prompts = [f"Write a long story about the number {i}; never stop early." for i in range(args.rows)]
    default_min = injection.GROUP_MIN_ROWS

    def run(arm, new, per_row=False):
        injection.GROUP_MIN_ROWS = 10**9 if per_row else default_min
        try:
            return greedy_generate(b, prompts, [arm], max_new_tokens=new, batch_rows=args.rows)[0]
        finally:
            injection.GROUP_MIN_ROWS = default_min

    rows = []
    for label, arm, per_row in (("base model", None, False), ("adapter, grouped rows", w, False),
                                ("adapter, per-row gather", w, True)):
        texts = run(arm, args.new_tokens, per_row)
        steps = min(args.new_tokens, max(len(b.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts))
        t1, _ = median_time(lambda: run(arm, 1, per_row), args.repeats)
        tn, _ = median_time(lambda: run(arm, args.new_tokens, per_row), args.repeats)
        per_tok = (tn - t1) / max(1, steps - 1)
        rows.append({"path": label, "prompt_forward_s": t1, "generate_s": tn, "tokens": steps, "decode_s_per_token": per_tok})
        print(f"{label:<26} prompt {t1:.2f} s, {steps} tokens in {tn:.2f} s, {per_tok:.3f} s/token", flush=True)

    prefix_rows = prefix_benchmark(b, w, args)
    res = {"command": command_line(), "machine": machine(), "backbone": args.backbone, "dtype": args.dtype,
           "rows": args.rows, "lora": {"rank": args.rank, "targets": args.targets}, "results": rows,
           "shared_prefix": prefix_rows}
    write_json(args.out / "eval_speed.json", res)
    md = [
        f"# Evaluator throughput: greedy decoding of {args.rows} rows ({args.backbone}, {args.dtype})",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine()}",
        "",
        f"LoRA r{args.rank} on {args.targets}; medians of {args.repeats}. Decode time per token = (time for "
        "N tokens − time for 1) / (N − 1).",
        "",
        "| path | prompt forward (s) | tokens | decode (s/token) | vs base |",
        "|---|---:|---:|---:|---:|",
    ]
    base = rows[0]["decode_s_per_token"]
    for r in rows:
        md.append(f"| {r['path']} | {r['prompt_forward_s']:.2f} | {r['tokens']} | {r['decode_s_per_token']:.3f} | "
                  f"{r['decode_s_per_token'] / base:.2f}× |")
    md += [
        "",
        f"## Shared prompt prefix, `evaluate_task` on {args.items} eval items, base + one adapter",
        "",
        "The prompt tokens every item shares (the chat template's system turn, the task's instructions) run once",
        "per arm and batch instead of once per row. Wall time of the whole call (prompt forwards and decoding),",
        f"medians of {args.prefix_repeats} interleaved runs; *identical* = both paths give the same prediction for every item and arm.",
        "",
        "| task | kind | prompt tokens (mean) | shared prefix | whole prompt per row (s) | shared prefix (s) | speed-up | identical |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in prefix_rows:
        md.append(f"| {r['task']} | {r['kind']} | {r['prompt_tokens']:.1f} | {r['shared_prefix']} | {r['unshared_s']:.2f} | "
                  f"{r['shared_s']:.2f} | {r['unshared_s'] / r['shared_s']:.2f}× | {'yes' if r['identical'] else 'NO'} |")
    (args.out / "eval_speed.md").write_text("\n".join(md) + "\n")


def prefix_benchmark(b, w, args) -> list[dict]:
    specs = load_suite(None)
    default_min = engine.MIN_SHARED_PREFIX
    out = []
    for name in filter(None, args.prefix_tasks.split(",")):
        task = build_task(get_spec(specs, name))
        items = task.split("eval")[: args.items]
        ids = [b.tokenizer(format_prompt(b.tokenizer, task, it), add_special_tokens=False)["input_ids"] for it in items]

        def run(shared: bool) -> dict:
            engine.MIN_SHARED_PREFIX = default_min if shared else 10**9
            try:
                return evaluate_task(b, task, {"base": None, "adapter": w}, limit=args.items, batch_rows=args.rows,
                                     keep_predictions=True)
            finally:
                engine.MIN_SHARED_PREFIX = default_min

        preds, secs = {}, {False: [], True: []}
        for _ in range(args.prefix_repeats):
            for flag in (False, True):  # interleaved, so a load change on the machine hits both paths alike
                t0 = time.perf_counter()
                preds[flag] = run(flag)["arms"]
                secs[flag].append(time.perf_counter() - t0)
        identical = all(preds[False][a]["predictions"] == preds[True][a]["predictions"] for a in preds[False])
        t_off, t_on = statistics.median(secs[False]), statistics.median(secs[True])
        row = {"task": name, "kind": task.kind, "items": len(items), "prompt_tokens": sum(map(len, ids)) / len(ids),
               "shared_prefix": engine._shared_prefix(ids), "unshared_s": t_off, "shared_s": t_on, "identical": identical}
        print(f"{name:<28} prefix {row['shared_prefix']}/{row['prompt_tokens']:.0f} tokens: {t_off:.2f} s -> {t_on:.2f} s "
              f"({t_off / t_on:.2f}x), identical={identical}", flush=True)
        out.append(row)
    return out


if __name__ == "__main__":
    main()
