"""Markdown for the held-out experiment's ``report.md`` and the ablation's ``ablation.md``.

:func:`table` draws every table of both; :func:`render` lays out a report from a results dict, its
:func:`~.stats.summarize` and the figures' skip reasons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .config import TargetConfig
from .stats import interval_level, mean, mean_std, recovered, table_rows

DASH = "—"


def fmt(x: float | None, spec: str) -> str:
    return DASH if x is None else format(x, spec)


def _pm(values: Sequence[float] | None, scale: float, digits: int) -> str:
    """``"mean ± std"`` of ``values`` × ``scale`` with ``digits`` decimals, or a dash."""
    stats = mean_std(values)
    if stats is None:
        return DASH
    return f"{stats[0] * scale:.{digits}f} ± {stats[1] * scale:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines, then an empty one."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def target_texts(targets: TargetConfig) -> dict[str, tuple[str, str]]:
    """Target key -> (its letter, what it asks), in the report's order."""
    return {
        "delta_beats_weight_only": ("a", "Δ-augmented beats weight-only on mean accuracy and mean Δ-cosine"),
        "recovers_oracle_gain": (
            "b",
            f"Δ-augmented recovers ≥ {targets.recovers_oracle_gain * 100:.0f} % of the oracle's gain over base",
        ),
        "delta_cosine_to_oracle": ("c", f"Δ-augmented mean Δ-cosine to oracle ≥ {targets.delta_cosine_to_oracle}"),
        "random_conditions_hurt": ("d", "Δ-augmented loses accuracy with random conditions"),
    }


def _task_section(task: str, entry: Mapping, order: Sequence[str], labels: Mapping[str, str]) -> list[str]:
    rows = entry.get("rows") or {}
    base, oracle = (mean(rows.get(r, {}).get("accuracies")) for r in ("base", "oracle"))
    body = []
    for row in order:
        r = rows.get(row) or {}
        accs = r.get("accuracies") or []
        m = mean(accs)
        gain = None if m is None or base is None else (m - base) * 100
        rec = recovered(m, base, oracle)
        body.append(
            [
                labels.get(row, row),
                _pm(accs, 100, 1),
                str(len(accs)) if accs else DASH,
                fmt(gain, "+.1f"),
                fmt(None if rec is None else rec * 100, ".1f"),
                _pm(r.get("delta_cosines"), 1, 3),
                _pm(r.get("delta_cosines_specific"), 1, 3),
            ]
        )
    kind = ", ".join(x for x in (entry.get("kind"), entry.get("n_items") and f"{entry['n_items']} items") if x)
    return [f"### {task}" + (f" ({kind})" if kind else ""), ""] + table(
        [
            "row",
            "accuracy (%)",
            "n adapters",
            "gain over base (pts)",
            "% of oracle gain",
            "Δ-cosine to oracle",
            "task-specific Δ-cosine",
        ],
        body,
    )


def _summary_table(rows: Mapping[str, Mapping], labels: Mapping[str, str]) -> list[str]:
    """The across-task means of every row (:func:`~.stats.row_means`)."""
    return table(
        ["row", "mean accuracy (%)", "mean Δ-cosine", "mean task-specific Δ-cosine", "tasks"],
        [
            [
                labels.get(r, r),
                fmt(None if s["accuracy"] is None else s["accuracy"] * 100, ".1f"),
                fmt(s["delta_cosine"], ".3f"),
                fmt(s.get("delta_cosine_specific"), ".3f"),
                str(s["n_tasks"]),
            ]
            for r, s in rows.items()
        ],
    )


def floor_lines(fl: Mapping | None, labels: Mapping[str, str], where: str) -> list[str]:
    """The floor (best baseline) of a section and every generator row against it."""
    if not fl:
        return []
    others = ", ".join(f"{labels.get(r, r)} {m * 100:.1f}" for r, m in fl["baselines"].items() if r != fl["row"])
    out = [
        f"**The floor** ({where}): the best baseline is **{labels.get(fl['row'], fl['row'])}**, "
        f"{fl['accuracy'] * 100:.1f} % mean accuracy" + (f" (others: {others})." if others else "."),
        "",
    ]
    for g, d in fl["generators"].items():
        mark = "✅" if d["beyond_noise"] else ("❌" if d["diff"] <= 0 else "➖")
        out.append(
            f"- {mark} {labels.get(g, g)} vs the floor: {d[g] * 100:.1f} vs {d[fl['row']] * 100:.1f} ({d['text']})"
        )
    return out + [""]


def comparison_lines(
    comps: Mapping | None, labels: Mapping[str, str], where: str, what: str = "Generators"
) -> list[str]:
    """Rows against reference rows (:func:`.stats.comparisons`): the generators against the weight-only generator
    and the mean merge, or the retrieval rows against the mean merge and the multi-task LoRA."""
    if not comps:
        return []
    out = [f"**{what} compared** ({where}; accuracy, row minus reference):", ""]
    for g, refs in comps.items():
        for ref, d in refs.items():
            mark = "✅" if d["beyond_noise"] else ("❌" if d["diff"] <= 0 else "➖")
            out.append(
                f"- {mark} {labels.get(g, g)} vs {labels.get(ref, ref)}: {d[g] * 100:.1f} vs {d[ref] * 100:.1f} "
                f"({d['text']})"
            )
    return out + [""]


def beats_base_lines(bb: Mapping | None, labels: Mapping[str, str], where: str) -> list[str]:
    """Per generator row, the tasks on which it beats the base model beyond noise (:func:`.stats.beats_base`)."""
    if not bb:
        return []
    out = [f"**Beats the base model on at least one task** ({where}; per task, paired bootstrap as in (a)):", ""]
    for g, v in bb.items():
        per = v["tasks"]
        wins = ", ".join(f"{t} ({per[t]['diff'] * 100:+.1f})" for t in v["wins"])
        mark = "✅" if v["wins"] else "❌"
        best = max(per, key=lambda t: per[t]["diff"])
        out.append(
            f"- {mark} {labels.get(g, g)}: "
            + (
                f"{len(v['wins'])} of {len(per)} tasks: {wins}"
                if wins
                else f"none of {len(per)} tasks (its best: {best} {per[best]['diff'] * 100:+.1f})"
            )
        )
    return out + [""]


def _seen_section(results: Mapping, summary: Mapping, order: Sequence[str], targets: TargetConfig) -> list[str]:
    """The seen tasks (training tasks, adapters generated from prompts held back from generator training): a table
    per task and their summary, drawn as the held-out ones; nothing for a run without them."""
    names = summary.get("seen_tasks") or []
    if not names:
        return []
    labels = results.get("seen_row_labels") or results.get("row_labels") or {}
    seen = ((results.get("config") or {}).get("seen")) or {}
    held = f"{seen['fraction'] * 100:g} % of" if "fraction" in seen else "part of"
    out = [
        "## Seen tasks",
        "",
        f"Training tasks: the generators trained on their teachers, but {held} each training task's condition pool "
        "was held back from generator training, and these adapters are generated from those prompts only. The "
        "oracle is the task's own training teachers. This measures fit (does the generator reproduce its training "
        "teachers from new prompts?), not generalisation to new tasks.",
        "",
    ]
    for task in names:
        out += _task_section(task, results["seen_tasks"][task], order, labels)
    out += ["### Summary over seen tasks", ""] + _summary_table(summary["seen_rows"], labels)
    out += floor_lines(summary.get("seen_floor"), labels, "seen tasks")
    out += comparison_lines(summary.get("seen_comparisons"), labels, "seen tasks")
    out += comparison_lines(summary.get("seen_retrieval_comparisons"), labels, "seen tasks", "Retrieval rows")
    checks = summary.get("seen_checks") or {}
    texts = {
        "seen_recovers_gain": "A generator's adapters recover ≥ "
        f"{targets.seen_recovers_gain * 100:.0f} % of the own teachers' gain over base (median over seen tasks; "
        "the best generator row)",
        "seen_random_conditions_hurt": "Δ-augmented loses accuracy with random conditions on seen tasks "
        "(paired bootstrap as in (d))",
    }
    if checks:
        out += ["### Fit checks", ""]
        for key, text in texts.items():
            d = checks[key]
            out.append(f"- {({True: '✅', False: '❌', None: '➖'})[d['ok']]} {text}: {d['detail']}")
        out.append("")
    return out


def _delta_space(results: Mapping) -> str:
    """Which probes and representation every Δ-cosine column of the report uses (the run's training Δ space)."""
    train = (results.get("config") or {}).get("train") or {}
    if not train.get("probes"):
        return ""
    probes = train["probes"]
    where = "each task's own train prompts" if str(probes).startswith("task:") else "the same prompts for every task"
    return (
        f" Every Δ-cosine column is measured on probes `{probes}` ({where}), representation "
        f"`{train.get('representation', 'last_token')}`."
    )


def alignment_lines(a: Mapping | None, where: str) -> list[str]:
    """The seed criterion "better Δ alignment correlates with better task performance" over ``where``'s adapters."""
    if not a:
        return []
    out = [
        f"**Δ alignment vs accuracy** ({where}; {a['n_adapters']} adapters of every row but base and the oracle, "
        f"{a['n_tasks']} tasks): accuracy gain over base against the adapter's Δ-cosine to the oracle.",
        "",
    ]
    for key, label in (("raw", "Δ-cosine"), ("specific", "task-specific Δ-cosine")):
        d = a.get(key)
        if not d:
            continue
        iv = d.get("spearman_interval")
        mark = {True: "✅", False: "❌", None: "➖"}[d.get("correlates")]
        out.append(
            f"- {mark} {label}: Spearman ρ {fmt(d['spearman'], '+.2f')}"
            + (f" (interval {iv[0]:+.2f} … {iv[1]:+.2f})" if iv else "")
            + f", Pearson r {fmt(d['pearson'], '+.2f')}; within a task, mean ρ {fmt(d['within_task_spearman'], '+.2f')}"
            f" over {d['tasks_with_spread']} tasks"
        )
    return out + [""]


def baselines_section(results: Mapping) -> list[str]:
    """What the baseline rows were built from: the Δ predictor's fit (training cosine per seed; task-specific cosine
    of its predictions to each held-out and seen task's own teachers), the retrieval settings, the multi-task LoRA's
    budget and Arrow's experts; nothing for a run without baselines."""
    b = results.get("baselines") or {}
    if not b:
        return []
    out = ["## Baselines", ""]
    if b.get("retrieval"):
        r = b["retrieval"]
        out.append(
            f"Retrieve-and-merge: the top {r['k']} training teachers, merge weights softmax(cosine / "
            f"{r['temperature']})."
        )
    pred = b.get("predictor") or {}
    if pred:
        fits = ", ".join(f"seed {s} {fmt(p.get('train_cosine'), '.3f')}" for s, p in pred.items())
        steps = next(iter(pred.values())).get("steps")
        out.append(f"Δ predictor (task-specific Δ, {steps} steps): training cosine {fits}.")
    cos = b.get("predictor_cosine") or {}
    for where, name in (("heldout", "held-out"), ("seen", "seen")):
        if cos.get(where):
            vals = ", ".join(f"{t} {fmt(c, '+.3f')}" for t, c in cos[where].items())
            out.append(f"Its predictions against the {name} tasks' own teachers (task-specific Δ-cosine): {vals}.")
    for seed, m in (b.get("multitask") or {}).items():
        out.append(f"Multi-task LoRA (zoo seed {seed}): {m.get('tasks')} training tasks, {m.get('steps')} steps.")
    if b.get("arrow"):
        a = b["arrow"]
        out.append(
            f"Arrow: top {a['top_k']} of {len(a['experts'])} experts (one per training task), temperature "
            f"{a['temperature']}."
        )
    return out + [""]


def _fit_section(results: Mapping) -> list[str]:
    """How well each generator variant reproduces its training teachers: the L_weights floor, the tail L_weights
    and the ΔW cosine of seen-task adapters to their teachers' mean; nothing for a run that recorded none."""
    fit = results.get("fit") or {}
    variants = [v for v in fit if v != "oracle"]
    if not variants:
        return []
    labels = results.get("row_labels") or {}
    body = []
    for v in variants:
        f = fit[v]
        floor, tail = f.get("weight_loss_floor"), f.get("tail_weight_loss")
        gap = None if floor is None or tail is None else tail - floor
        body.append(
            [
                labels.get(v, v),
                str(f.get("weight_loss", "")),
                fmt(floor, ".3f"),
                fmt(tail, ".3f"),
                fmt(gap, "+.3f"),
                fmt(f.get("seen_dw_cosine"), ".3f"),
            ]
        )
    ceiling = (fit.get("oracle") or {}).get("seen_dw_cosine")
    return [
        "## Generator fit",
        "",
        "L_weights is 1.0 for predicting zero; its floor is what a generator would reach by outputting each task's "
        "mean teacher exactly (teachers of one task differ by data order and seed). Tail: the mean of the last "
        "tenth of logged steps, mean over seeds. ΔW cosine: a seen-task adapter's ΔW against the mean ΔW of the "
        "task's own teachers, mean over adapters and seen tasks"
        + (f" (the teachers themselves: {ceiling:.3f})." if ceiling is not None else "."),
        "",
    ] + table(["generator", "weight loss", "floor", "tail L_weights", "tail − floor", "seen-task ΔW cosine"], body)


def _total(seconds: Mapping[str, Any]) -> str:
    return f"**{sum(float(v) for v in seconds.values()):.1f}**"


def timing_table(call: Mapping[str, float], all_calls: Mapping[str, Any] | None) -> list[str]:
    """Seconds per stage of the call that wrote the report and, for a run resumed over several calls, summed over
    all."""
    if not all_calls or int(all_calls.get("calls", 1)) <= 1:
        if not call:
            return ["Not recorded.", ""]
        return table(
            ["stage", "seconds"], [[k, f"{float(v):.1f}"] for k, v in call.items()] + [["**total**", _total(call)]]
        )
    stages = all_calls.get("stages") or {}
    names = list(stages) + [k for k in call if k not in stages]
    n = int(all_calls["calls"])
    return [
        f"Resumed: {n} calls wrote into this run directory. A stage that a kill cut short is not counted.",
        "",
    ] + table(
        ["stage", "this call (s)", f"all {n} calls (s)"],
        [[k, fmt(call.get(k), ".1f"), fmt(stages.get(k), ".1f")] for k in names]
        + [["**total**", _total(call), _total(stages)]],
    )


def render(results: Mapping, summary: Mapping, figures: Mapping[str, str | None], targets: TargetConfig) -> str:
    """report.md: setup, a table per held-out task, the summary table, the targets, timing, notes and figures
    (each figure's link, or the reason it was skipped)."""
    labels, order = results.get("row_labels") or {}, table_rows(results)

    def listing(key: str) -> str:
        names = results.get(key) or []
        return f"({len(names)}): " + (", ".join(names) or DASH)

    out = [f"# {results.get('title') or 'deltalora held-out experiment'}", ""]
    if results.get("command"):
        out += ["Reproduce:", "", "```", str(results["command"]), "```", ""]
    machine = results.get("machine")  # absent in runs written before it was recorded: their report is unchanged
    out += [f"- Backbone: `{results.get('backbone') or DASH}`"]
    if isinstance(machine, Mapping):
        out += [
            f"- Machine: {machine.get('description') or DASH}; teachers trained in "
            f"{machine.get('teacher_precision') or DASH}"
        ]
    out += [
        f"- Training tasks {listing('train_tasks')}",
        f"- Held-out tasks {listing('heldout_tasks')}",
        *([f"- Seen tasks {listing('seen_tasks')}"] if results.get("seen_tasks") else []),
        "",
        "Accuracy is in points (mean ± population std over the evaluated adapters); gain and % of oracle gain "
        "use the row's mean; Δ-cosine is each adapter's Δ against the held-out task's own teacher; the "
        "task-specific Δ-cosine first projects the training teachers' mean Δ (the shift every fine-tune shares) "
        "out of both." + _delta_space(results),
        "",
        "## Held-out tasks",
        "",
    ]
    for task in summary["heldout_tasks"]:
        out += _task_section(task, results["tasks"][task], order, labels)
    missing = [t for t in results.get("heldout_tasks") or [] if t not in results["tasks"]]
    if missing or not summary["heldout_tasks"]:
        out += [f"No results for held-out tasks: {', '.join(missing) or 'any'}.", ""]
    out += ["## Summary over held-out tasks", ""] + _summary_table(summary["rows"], labels)
    out += [
        "## Targets",
        "",
        f"(a) and (d) hold only when the lower end of the difference's {interval_level(targets.noise_se) * 100:.0f} % "
        f"bootstrap interval (the coverage of ± {targets.noise_se:g} standard errors) is above 0. For accuracy the "
        "bootstrap is paired over eval items and adapters: each resample draws the items (the same draw for both "
        "rows) and, within each row, its adapters (seeds × generated adapters per task); Δ-cosine has no items, so "
        "only adapters are resampled. A run recorded without per-item scores falls back to "
        f"{targets.noise_se:g} standard errors over adapters, with items not resampled, as its lines say.",
        "",
    ]
    for key, (letter, text) in target_texts(targets).items():
        d = summary["target_details"][key]
        mark = {True: "✅", False: "❌", None: "➖"}[d["ok"]]
        out.append(f"- {mark} **({letter})** {text}: {d['detail']}")
    out += (
        [""]
        + floor_lines(summary.get("floor"), labels, "held-out tasks")
        + comparison_lines(summary.get("comparisons"), labels, "held-out tasks")
        + comparison_lines(summary.get("retrieval_comparisons"), labels, "held-out tasks", "Retrieval rows")
        + beats_base_lines(summary.get("beats_base"), labels, "held-out tasks")
        + alignment_lines(summary.get("alignment"), "held-out tasks")
        + _seen_section(results, summary, order, targets)
        + alignment_lines(summary.get("seen_alignment"), "seen tasks")
        + baselines_section(results)
        + _fit_section(results)
    )
    out += ["## Timing", ""] + timing_table(results.get("timing") or {}, results.get("timing_all_calls"))
    if results.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    out += ["## Figures", ""]
    for name, reason in figures.items():
        out += [f"![{name}](figures/{name}.png)" if reason is None else f"_{name}.png skipped: {reason}._", ""]
    return "\n".join(out)


ABLATION_HEADER = [
    "variant",
    "factor",
    "L_weights",
    "train Δ-cos",
    "held-out Δ-cos to oracle",
    "held-out task-specific Δ-cos",
    "held-out accuracy",
    "training s",
    "seconds",
]


def _mean_pm_std(row: Mapping[str, Any], key: str) -> str:
    return f"{row[f'{key}_mean']:.3f} ± {row[f'{key}_std']:.3f}"


def ablation_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ablation's table: one line per variant (a row of ``ablation.json``)."""
    body = []
    for r in rows:
        acc = r["heldout_accuracy_mean"]
        body.append(
            [
                str(r["variant"]),
                str(r["factor"]),
                fmt(r["tail_loss_weights"], ".4f"),
                fmt(r["tail_train_delta_cosine"], ".3f"),
                _mean_pm_std(r, "heldout_delta_cosine"),
                _mean_pm_std(r, "heldout_specific_cosine"),
                fmt(None if acc is None else 100 * acc, ".1f"),
                str(r["train_seconds"]),
                str(r["seconds"]),
            ]
        )
    return table(ABLATION_HEADER, body)


__all__ = ["ABLATION_HEADER", "DASH", "ablation_table", "fmt", "render", "table", "target_texts", "timing_table"]
