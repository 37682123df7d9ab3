"""Prompt and target text for training and evaluation (deterministic, chat-templated).

User message by kind:

- ``short``: the prompt, a blank line, then ``Answer with only the final answer.``
- ``mc``: the prompt, a blank line, ``Options:`` and one ``A. <choice>`` line per choice, a blank line, then
  ``Answer with the text of the correct option.`` — the target is the gold choice's *text* (not its letter),
  so the same continuation serves completion-only training and log-likelihood scoring of each choice.
- ``code``: ``Complete the following Python function. Answer with only the code of its body.``, a blank line,
  then the function stub; the target is the reference body.

A non-empty ``item.meta["system"]`` (DnD files) becomes the system message. The chat template is applied with
``add_generation_prompt=True``, so the string ends with the assistant prefix; generation starts right after it.
"""

from __future__ import annotations

import string

from .items import Task, TaskItem

SHORT_INSTRUCTION = "Answer with only the final answer."
MC_INSTRUCTION = "Answer with the text of the correct option."
CODE_INSTRUCTION = "Complete the following Python function. Answer with only the code of its body."


def _label(i: int) -> str:
    return string.ascii_uppercase[i] if i < 26 else str(i + 1)


def user_message(task: Task, item: TaskItem) -> str:
    """The user turn's text for ``item`` (before the chat template)."""
    if task.kind == "code":
        return f"{CODE_INSTRUCTION}\n\n{item.prompt}"
    if task.kind == "mc":
        options = "\n".join(f"{_label(i)}. {c}" for i, c in enumerate(item.choices or []))
        return f"{item.prompt.strip()}\n\nOptions:\n{options}\n\n{MC_INSTRUCTION}"
    return f"{item.prompt.strip()}\n\n{SHORT_INSTRUCTION}"


def format_prompt(tokenizer, task: Task, item: TaskItem) -> str:
    """The chat-templated prompt, ending with the assistant generation prefix."""
    messages = []
    system = item.meta.get("system")
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user_message(task, item)})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def format_target(task: Task, item: TaskItem) -> str:
    """The completion trained on (completion-only loss); adding EOS is the trainer's job."""
    return item.answer
