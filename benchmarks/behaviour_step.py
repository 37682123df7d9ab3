"""The behaviour losses' student side: Δ on task probes + the KL tether, as two forwards or as one.

    python benchmarks/behaviour_step.py --probes task:train:2 --repeats 5

For each task: one random r8 all-7 "teacher" and one "student" adapter (N(0, ``--std``), seeded) on the backbone;
the teacher's answer log-probs are computed once without gradients (the loop recomputes them every step; that part
is the same in both paths and timed separately). Timed, forward and backward of KL(teacher ‖ student) + ‖Δ − t‖²:

- *two forwards*: ``AnswerLogProbs`` over prompt + answer for the KL, ``DeltaProbe`` over the prompts for Δ (the
  training loop before the fused step);
- *one forward*: ``AnswerLogProbs(..., rep=...)`` gives both, Δ pooled over the prompt tokens (the loop now, when
  the Δ loss and the KL use the same task probes).

Medians of ``--repeats`` after one warm-up; the largest |Δ| difference and the KL difference between the two are
reported (same math; the forward shapes differ). Writes results/behaviour_step.{md,json}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _util import command_line, machine, median_time, write_json
from deltalora.backbones import load_backbone
from deltalora.backbones.precision import describe_machine
from deltalora.config import LoraSpec, RuntimeConfig
from deltalora.deltas import AnswerLogProbs, DeltaProbe, TaskProbes, answer_kl
from deltalora.lora import LoraWeights, derive_layout
from deltalora.tasks import build_task, get_spec, load_suite

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TASKS = "bb_date_understanding,rg_word_sequence_reversal,bb_plural"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--probes", default="task:train:2", help="the task probes of both losses")
    ap.add_argument("--representation", default="last_token")
    ap.add_argument("--answer-tokens", type=int, default=16)
    ap.add_argument("--std", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "behaviour_step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b = load_backbone(args.backbone, RuntimeConfig(device="cpu", dtype="float32"), progress=False)
    layout = derive_layout(b.arch, LoraSpec(rank=8, alpha=16, targets="q,k,v,o,gate,up,down"))
    specs = load_suite(None)
    names = [t for t in args.tasks.split(",") if t]
    tasks = {n: build_task(get_spec(specs, n)) for n in names}
    answers = AnswerLogProbs(b, TaskProbes(args.probes, tasks, b.tokenizer), args.answer_tokens)
    probe = DeltaProbe(b, TaskProbes(args.probes, tasks, b.tokenizer), args.representation)
    if not probe.shares_forward_with(answers):
        raise SystemExit("the probe and the answers do not share a forward; nothing to compare")
    rows = []
    for name in names:
        g = [name]
        if not answers.prompts_are(name, probe.probe_texts(name)):
            raise SystemExit(f"{name}: its answer rows do not start with its probes; nothing to compare")
        teacher = LoraWeights.stack([LoraWeights.random(layout, std=args.std, seed=1)])
        student = LoraWeights.stack([LoraWeights.random(layout, std=args.std, seed=2)])
        for t in student.tensors():
            t.requires_grad_(True)
        with torch.no_grad():
            teacher_logp = answers(teacher, g)
            teacher_s, _ = median_time(lambda: answers(teacher, g), args.repeats)
        mask = answers.mask(g)
        target = torch.zeros(1, probe.rep.dim(b.arch.hidden_size))
        got: dict[str, tuple[float, torch.Tensor]] = {}

        def two():
            kl = answer_kl(teacher_logp, answers(student, g), mask).mean()
            d = probe(student, g)
            (kl + (d - target).square().sum()).backward()
            got["two"] = (float(kl.detach()), d.detach())

        def one():
            logp, v = answers(student, g, rep=probe.rep)
            d = probe.delta_of(v, g)
            kl = answer_kl(teacher_logp, logp, mask).mean()
            (kl + (d - target).square().sum()).backward()
            got["one"] = (float(kl.detach()), d.detach())

        t_two, _ = median_time(two, args.repeats)
        t_one, _ = median_time(one, args.repeats)
        enc = answers._group((name,))["enc"]["input_ids"]
        rows.append(
            {
                "task": name,
                "rows": int(enc.shape[0]),
                "tokens": int(enc.shape[1]),
                "teacher_no_grad_s": round(teacher_s, 3),
                "two_forwards_s": round(t_two, 3),
                "one_forward_s": round(t_one, 3),
                "speedup": round(t_two / t_one, 2),
                "max_abs_delta_diff": float((got["one"][1] - got["two"][1]).abs().max()),
                "delta_norm": float(got["two"][1].norm()),
                "kl_diff": abs(got["one"][0] - got["two"][0]),
            }
        )
        print(rows[-1], flush=True)
    cmd = command_line()
    settings = {**vars(args), "out": str(args.out)}
    write_json(args.out.with_suffix(".json"), {"command": cmd, "machine": machine(), "args": settings, "rows": rows})
    lines = [
        f"# Behaviour losses' student side: Δ + KL as two forwards or one ({args.backbone}, float32)",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {describe_machine()}; precision float32.",
        "",
        f"Probes `{args.probes}` for both losses, representation `{args.representation}`, 1 adapter, answers cut "
        f"to {args.answer_tokens} tokens. Seconds are medians of {args.repeats} (forward + backward of KL + ‖Δ − t‖²).",
        "",
        "| task | rows × tokens | teacher side, no grad (s) | two forwards (s) | one forward (s) | speed-up "
        "| max abs Δ difference (‖Δ‖) | KL difference |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['rows']} × {r['tokens']} | {r['teacher_no_grad_s']:.2f} | {r['two_forwards_s']:.2f} "
            f"| {r['one_forward_s']:.2f} | {r['speedup']:.2f}× | {r['max_abs_delta_diff']:.1e} ({r['delta_norm']:.1f}) "
            f"| {r['kl_diff']:.1e} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
