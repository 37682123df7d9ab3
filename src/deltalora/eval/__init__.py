"""Evaluation: score the base model and adapters on a task's eval split."""

from .engine import choice_logprobs, greedy_generate
from .runner import BASE, evaluate_task, load_arms, max_new_tokens_for, task_from_file

__all__ = [
    "BASE",
    "choice_logprobs",
    "evaluate_task",
    "greedy_generate",
    "load_arms",
    "max_new_tokens_for",
    "task_from_file",
]
