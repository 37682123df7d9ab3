"""User data files, validated where they enter.

- ``jsonl`` — one JSON object per line:
  short answer ``{"prompt": str, "answer": str}``;
  multiple choice ``{"prompt": str, "choices": [str, ...], "answer": str | int}`` where ``answer`` is either the
  gold choice's exact text or its 0-based index into ``choices``.
- ``dnd_json`` — DnD / LLaMA-Factory JSON: one array ``[{"prompt": str, "response": str, "system": str}]``
  (``system`` optional, may be empty; kept in ``meta["system"]`` and used as the chat system message).

Every problem is a :class:`TaskError` of one line naming the file (and line or entry) and the fix.
Other keys in a record are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from ...config import StrictModel
from ..items import TaskError, TaskItem, mc_item
from ..registry import register_task_source


class FileArgs(StrictModel):
    path: str = Field(min_length=1)  # relative paths in a suite YAML are resolved against the YAML's folder


def read_user_text(path: Path) -> str:
    if not path.is_file():
        raise TaskError(f"{path}: file not found; pass the path of an existing data file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TaskError(f"{path}:{line}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8") from None
    if not text.strip():
        raise TaskError(f"{path}: file is empty; add at least one record")
    return text


def _text_field(rec: dict, key: str, where: str, *, optional: bool = False) -> str:
    if key not in rec:
        if optional:
            return ""
        raise TaskError(f"{where}: missing field {key!r}; every record needs a non-empty {key!r} string")
    val = rec[key]
    if not isinstance(val, str):
        raise TaskError(f"{where}: field {key!r} must be a string, got {type(val).__name__}; quote it")
    if not val.strip() and not optional:
        raise TaskError(f"{where}: field {key!r} is empty; give it text or drop the record")
    return val


def _mc_record(rec: dict, where: str, prompt: str) -> TaskItem:
    choices = rec["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise TaskError(f"{where}: 'choices' must be a list of at least 2 non-empty strings; fix the record")
    if len(set(choices)) != len(choices):
        raise TaskError(f"{where}: 'choices' has duplicates; make every choice distinct")
    if "answer" not in rec:
        raise TaskError(f"{where}: missing field 'answer'; give the gold choice's text or its 0-based index")
    ans = rec["answer"]
    if isinstance(ans, bool) or not isinstance(ans, (str, int)):
        raise TaskError(
            f"{where}: 'answer' must be the gold choice's text or its 0-based index, got {type(ans).__name__}"
        )
    if isinstance(ans, int):
        if not 0 <= ans < len(choices):
            raise TaskError(
                f"{where}: answer index {ans} is out of range for {len(choices)} choices; use 0..{len(choices) - 1}"
            )
        return mc_item(prompt, choices, ans)
    if ans not in choices:
        raise TaskError(f"{where}: answer {ans!r} is not one of the choices; copy the gold choice's text exactly")
    return mc_item(prompt, choices, choices.index(ans))


def read_jsonl(path: str | Path, kind: str | None = None) -> tuple[str, list[TaskItem]]:
    """Items of a JSONL task file and its kind (``mc`` if records have ``choices``, else ``short``)."""
    path = Path(path)
    items, found = [], kind
    for lineno, line in enumerate(read_user_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(
                f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); write one JSON object per line"
            ) from None
        if not isinstance(rec, dict):
            raise TaskError(f"{where}: expected a JSON object, got {type(rec).__name__}; write one object per line")
        rec_kind = "mc" if "choices" in rec else "short"
        if found is None:
            found = rec_kind
        if rec_kind != found:
            raise TaskError(
                f"{where}: record is {rec_kind} but the task is {found}; "
                "keep 'choices' in every record (multiple choice) or in none (short answer)"
            )
        prompt = _text_field(rec, "prompt", where)
        if rec_kind == "mc":
            items.append(_mc_record(rec, where, prompt))
        else:
            items.append(TaskItem(prompt, _text_field(rec, "answer", where).strip()))
    return str(found), items


def read_dnd_json(path: str | Path) -> list[TaskItem]:
    """Items of a DnD / LLaMA-Factory JSON file ``[{"prompt", "response", "system"}]`` (short answers)."""
    path = Path(path)
    try:
        data = json.loads(read_user_text(path))
    except json.JSONDecodeError as exc:
        raise TaskError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); fix the syntax"
        ) from None
    if not isinstance(data, list) or not data:
        raise TaskError(f"{path}: expected a non-empty JSON array of {{prompt, response, system}} objects")
    items = []
    for i, rec in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(rec, dict):
            raise TaskError(f"{where}: expected an object with prompt/response/system, got {type(rec).__name__}")
        prompt = _text_field(rec, "prompt", where)
        response = _text_field(rec, "response", where).strip()
        system = _text_field(rec, "system", where, optional=True)
        items.append(TaskItem(prompt, response, None, {"system": system} if system.strip() else {}))
    return items


@register_task_source("jsonl", args=FileArgs, kinds=("mc", "short"))
def _jsonl(args: FileArgs, *, name: str, kind: str, size: int, seed: int) -> list[TaskItem]:
    return read_jsonl(args.path, kind)[1]


@register_task_source("dnd_json", args=FileArgs, kinds=("short",))
def _dnd_json(args: FileArgs, *, name: str, kind: str, size: int, seed: int) -> list[TaskItem]:
    return read_dnd_json(args.path)
