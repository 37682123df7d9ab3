"""BIG-bench task JSONs, extracted from the ``bigbench==1.0.0`` sdist (never pip-installed).

The sdist (358 MB) is fetched once into ``home()/downloads/``, its sha256 checked against the pin, and the
requested ``bigbench-1.0.0/bigbench/benchmark_tasks/<task>[/<subtask>]/task.json`` members are extracted in
one pass over the archive into ``home()/tasks/bigbench/<sha256[:16]>/<task>/task.json`` (atomic writes).

Why not ``pip download``: even with ``--no-deps --no-binary=:all:``, pip prepares the sdist's metadata (it
runs bigbench's build backend) and then refuses it because it declares a ``bleurt @ file://`` dependency;
nothing is saved. So the archive is fetched from the package index's PEP 691 JSON page instead
(``$PIP_INDEX_URL`` or ``https://pypi.org/simple``), and pinned by sha256 like any other download here.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from ... import paths
from ...config import StrictModel
from ..items import TaskError, TaskItem, mc_item
from ..registry import register_task_source
from ..splits import stable_seed
from .pinned import Downloader, PinnedRelease, download_release, fetch_members

BIGBENCH_VERSION = "1.0.0"
BIGBENCH_SDIST = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
MEMBER_ROOT = f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks"
_TASK_NAME = re.compile(r"^[A-Za-z0-9_]+(/[A-Za-z0-9_]+)?$")


def _release(sha256: str | None = None) -> PinnedRelease:
    return PinnedRelease("bigbench", BIGBENCH_SDIST, sha256 or BIGBENCH_SHA256)


def download_from_index(dest_dir: Path) -> Path:
    """Fetch the sdist named in the index's PEP 691 JSON page for ``bigbench`` into ``dest_dir``."""
    return download_release(_release(), dest_dir)


def _extract_root(sha256: str | None = None) -> Path:
    return paths.home() / "tasks" / "bigbench" / (sha256 or BIGBENCH_SHA256)[:16]


def _check_name(task: str) -> str:
    if not _TASK_NAME.match(task):
        raise TaskError(
            f"bad BIG-bench task name {task!r}; use <task> or <task>/<subtask>, e.g. arithmetic/2_digit_addition"
        )
    return task


def task_json_path(task: str, sha256: str | None = None) -> Path:
    return _extract_root(sha256) / _check_name(task) / "task.json"


def fetch_bigbench(
    tasks: Iterable[str], downloader: Downloader | None = None, sha256: str | None = None
) -> dict[str, Path]:
    """Make every task's ``task.json`` available locally; missing ones are extracted in ONE archive pass."""
    tasks = sorted({_check_name(t) for t in tasks})
    out = {t: task_json_path(t, sha256) for t in tasks}
    fetch_members(
        _release(sha256),
        {f"{MEMBER_ROOT}/{t}/task.json": out[t] for t in tasks},
        downloader or download_from_index,
        hint="check the names against bigbench/benchmark_tasks (subtasks are written <task>/<subtask>)",
    )
    return out


def read_task_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TaskError(f"{path}: unreadable BIG-bench task.json ({exc}); delete it to extract it again") from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise TaskError(f"{path}: has no 'examples' list; it is a parent task, name one of its subtasks instead")
    return data


def parse_examples(
    data: dict, *, kind: str, name: str, task_prefix: bool = False, instruction: str = ""
) -> tuple[list[TaskItem], int]:
    """Items of one BIG-bench task JSON, and how many examples were skipped.

    ``kind="mc"`` reads ``target_scores`` (choices = keys, shuffled deterministically per item so position carries
    no signal; exactly one key must score 1); ``kind="short"`` reads ``target`` (a string or a list of acceptable
    answers). Prompts are the example ``input`` only; the chat template does the framing. Tasks whose question is
    not in the input (navigate: "do you return to the starting point?") set ``task_prefix=True`` to prepend the
    task-level ``task_prefix``, or give their own ``instruction`` (e.g. "Give the past tense of the verb.").
    """
    parts = [instruction.strip(), str(data.get("task_prefix", "")).strip() if task_prefix else ""]
    prefix = "\n\n".join(p for p in parts if p)
    items, skipped = [], 0
    for ex in data["examples"]:
        text = str(ex.get("input", "")).strip()
        if not text:
            skipped += 1
            continue
        prompt = f"{prefix}\n\n{text}" if prefix else text
        if kind == "mc":
            scores = ex.get("target_scores")
            if not isinstance(scores, dict) or not scores:
                skipped += 1
                continue
            choices = [str(c).strip() for c in scores]
            golds = [c for c, s in zip(choices, scores.values(), strict=True) if float(s) == 1.0]
            if len(golds) != 1 or len(set(choices)) != len(choices):
                skipped += 1
                continue
            random.Random(stable_seed("choices", name, prompt)).shuffle(choices)
            items.append(mc_item(prompt, choices, choices.index(golds[0])))
        else:
            target = ex.get("target")
            targets = [target] if isinstance(target, str) else target
            if (
                not isinstance(targets, list)
                or not targets
                or not all(isinstance(t, str) and t.strip() for t in targets)
            ):
                skipped += 1
                continue
            targets = [t.strip() for t in targets]
            items.append(TaskItem(prompt, targets[0], None, {"targets": targets}))
    return items, skipped


class BigBenchArgs(StrictModel):
    task: str = Field(min_length=1)  # "<task>" or "<task>/<subtask>"
    task_prefix: bool = False  # prepend the task-level task_prefix (when it holds the question)
    instruction: str = ""  # our own instruction, prepended to each input (when the task JSON has none)


@register_task_source("bigbench", args=BigBenchArgs, kinds=("mc", "short"))
def _bigbench(args: BigBenchArgs, *, name: str, kind: str, size: int, seed: int) -> list[TaskItem]:
    """``kind: mc`` reads target_scores, ``kind: short`` reads target (see :func:`parse_examples`)."""
    path = fetch_bigbench([args.task])[args.task]
    items, skipped = parse_examples(
        read_task_json(path), kind=kind, name=name, task_prefix=args.task_prefix, instruction=args.instruction
    )
    if skipped:
        warnings.warn(
            f"task {name!r}: skipped {skipped} BIG-bench examples of {args.task} without a usable "
            f"{'single gold in target_scores' if kind == 'mc' else 'target'}",
            stacklevel=2,
        )
    return items
