"""Evaluation: score the base model and adapters on a task's eval split."""

from .engine import choice_logprobs, greedy_generate

__all__ = ["choice_logprobs", "greedy_generate"]
