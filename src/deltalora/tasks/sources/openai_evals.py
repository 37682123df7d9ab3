"""Answer-matched tasks from the registry data of the ``evals==3.0.1.post1`` wheel (OpenAI Evals, MIT; never installed).

The wheel ships ``evals/registry/data/<task>/<file>.jsonl``: one sample per line, ``{"input": [chat messages],
"ideal": "<answer>" | ["<answer>", ...]}``. The wheel (46 MB) is fetched once from the package index and pinned by
sha256 (:mod:`.pinned`); the named files are extracted in one read into
``home()/tasks/openai_evals/<sha256[:16]>/<path>``. Use the data of evals the registry scores by matching the answer
(``Match``, ``Includes``, ``FuzzyMatch``), not model-graded ones.

An item is one sample: its prompt is every message's content in order, joined by a blank line (the registry puts
the instruction in a system message and the item in the user message; a few put both in one message), and its
targets are the ideal answers. A prompt that occurs with two different ideals is left out, as are samples without
a usable input or ideal. Each dataset keeps the license its contributor gave it in the Evals registry.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from ...config import StrictModel
from ..items import TaskError, TaskItem
from ..registry import register_task_source
from .pinned import Downloader, PinnedRelease, cache_root, fetch_members

EVALS_WHEEL = "evals-3.0.1.post1-py3-none-any.whl"
EVALS_SHA256 = "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78"
MEMBER_ROOT = "evals/registry/data"
_PATH = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*\.jsonl$")


def release(sha256: str | None = None) -> PinnedRelease:
    return PinnedRelease("evals", EVALS_WHEEL, sha256 or EVALS_SHA256)


def samples_path(path: str, sha256: str | None = None) -> Path:
    if not _PATH.match(path) or ".." in path.split("/"):
        raise TaskError(
            f"bad Evals samples path {path!r}: a .jsonl file under {MEMBER_ROOT}, e.g. regex-match/samples.jsonl"
        )
    return cache_root("openai_evals", sha256 or EVALS_SHA256) / path


def fetch_openai_evals(
    files: Iterable[str], downloader: Downloader | None = None, sha256: str | None = None
) -> dict[str, Path]:
    """Make every samples file available locally; missing ones come from ONE wheel read."""
    out = {f: samples_path(f, sha256) for f in sorted(set(files))}
    fetch_members(release(sha256), {f"{MEMBER_ROOT}/{f}": p for f, p in out.items()}, downloader)
    return out


def read_samples(path: Path) -> list[dict]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TaskError(f"{path}: unreadable Evals samples file ({exc}); delete it to extract it again") from None


def sample_item(sample: dict) -> TaskItem | None:
    """One short-answer item of a sample, or None when it lacks a text input or an ideal."""
    messages = sample.get("input") if isinstance(sample, dict) else None
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        return None
    texts = [m.get("content") for m in messages if isinstance(m, dict)]
    if len(texts) != len(messages) or not all(isinstance(t, str) and t.strip() for t in texts):
        return None
    ideal = sample.get("ideal")
    targets = [ideal] if isinstance(ideal, str) else ideal
    if not isinstance(targets, list):
        return None
    targets = [t.strip() for t in targets if isinstance(t, str) and t.strip()]
    if not targets:
        return None
    return TaskItem("\n\n".join(t.strip() for t in texts), targets[0], None, {"targets": targets})


def parse_samples(samples: Iterable[dict], max_chars: int | None = None) -> tuple[list[TaskItem], int]:
    """Items of the distinct samples (a prompt seen with two different ideals is left out), and how many samples
    were unusable, conflicting or over the cap."""
    by_prompt: dict[str, TaskItem] = {}
    conflicting: set[str] = set()
    skipped = 0
    for sample in samples:
        item = sample_item(sample)
        if item is None or (max_chars is not None and len(item.prompt) + len(item.answer) > max_chars):
            skipped += 1
            continue
        seen = by_prompt.get(item.prompt)
        if seen is None:
            by_prompt[item.prompt] = item
        elif seen.meta["targets"] != item.meta["targets"]:
            conflicting.add(item.prompt)
    items = [it for p, it in by_prompt.items() if p not in conflicting]
    return items, skipped + len(by_prompt) - len(items)


class OpenAIEvalsArgs(StrictModel):
    # the samples file under evals/registry/data, e.g. regex-match/samples.jsonl (not `path`: suites resolve a `path`
    # arg against their own folder, as user files are)
    samples: str = Field(min_length=1)
    max_chars: int | None = Field(None, ge=1)  # the length cap: leave out samples whose prompt + answer are longer


@register_task_source("openai_evals", args=OpenAIEvalsArgs, kinds=("short",))
def _openai_evals(args: OpenAIEvalsArgs, *, name: str, kind: str, size: int, seed: int) -> list[TaskItem]:
    items, skipped = parse_samples(read_samples(fetch_openai_evals([args.samples])[args.samples]), args.max_chars)
    if skipped:
        warnings.warn(
            f"task {name!r}: skipped {skipped} Evals samples of {args.samples} (no usable input or ideal, a "
            f"conflicting ideal{f', or longer than {args.max_chars} characters' if args.max_chars else ''})",
            stacklevel=2,
        )
    return items
