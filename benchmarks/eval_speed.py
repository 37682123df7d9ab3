"""Evaluator throughput: greedy decoding of a batch under the base model vs under a routed adapter.

    python benchmarks/eval_speed.py --backbone qwen2.5-coder-0.5b-instruct --rows 32 --new-tokens 17 --repeats 3

The evaluator scores an arm's rows through ``inject(..., rows=...)``. Two routed layouts are timed on the
same batch: rows grouped by adapter (one dense matmul pair per adapter, the default whenever adapters
serve >= GROUP_MIN_ROWS rows each) and a per-row gather of A and B (what the router does for many adapters
over few rows). Reports the prompt forward (one new token) and the per-token decode time, medians of
``--repeats``; writes results/eval_speed.{md,json}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _util import command_line, machine, median_time, write_json
from deltalora.backbones import load_backbone
from deltalora.config import LoraSpec, RuntimeConfig
from deltalora.eval import greedy_generate
from deltalora.lora import LoraWeights
from deltalora.lora import injection


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

    res = {"command": command_line(), "machine": machine(), "backbone": args.backbone, "dtype": args.dtype,
           "rows": args.rows, "lora": {"rank": args.rank, "targets": args.targets}, "results": rows}
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
    (args.out / "eval_speed.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
