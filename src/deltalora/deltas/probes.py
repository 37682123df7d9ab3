"""Probe sets: the fixed prompts whose hidden states define v(M), each identified by the hash of its texts.

A probe set is registered by name with :func:`register_probe_set` (one function, lm-eval style) or
read from a user file with :func:`load_probe_file`. :func:`get_probe_set` resolves either. The
cache keys on :attr:`ProbeSet.sha256` — the exact texts — never on the name, so editing a probe
invalidates every Δ computed with it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeltaLoraError
from ..registry import Registry


class ProbeError(DeltaLoraError):
    """A probe set cannot be resolved or a probe file is unusable."""


@dataclass(frozen=True)
class ProbeSet:
    name: str
    texts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.texts:
            raise ProbeError(f"probe set {self.name!r} is empty; give it at least one probe text")
        if not all(isinstance(t, str) and t for t in self.texts):
            raise ProbeError(
                f"probe set {self.name!r} holds an empty or non-string probe; every probe must be non-empty text"
            )

    @property
    def sha256(self) -> str:
        """Hash of the exact texts, in order (JSON list, UTF-8): the only thing cache keys see."""
        blob = json.dumps(list(self.texts), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    def __len__(self) -> int:
        return len(self.texts)


_REGISTRY = Registry("probe set")  # name -> zero-argument function returning a ProbeSet


def register_probe_set(name: str):
    """Decorator: register a zero-argument function returning a :class:`ProbeSet` under ``name``."""

    return _REGISTRY.register(name)


def probe_set_names() -> list[str]:
    return sorted(_REGISTRY)


def get_probe_set(name_or_path: str | Path) -> ProbeSet:
    """A registered probe set by name, or a user probe file (``.txt`` / ``.jsonl``) by path."""
    key = str(name_or_path)
    if key in _REGISTRY:
        probes = _REGISTRY[key]()
        if probes.name != key:
            raise ValueError(f"probe set registered as {key!r} calls itself {probes.name!r}")
        return probes
    path = Path(key)
    if path.suffix in {".txt", ".jsonl"} or path.exists():
        return load_probe_file(path)
    raise ProbeError(
        f"unknown probe set {key!r}; use one of {', '.join(probe_set_names())} or a .txt/.jsonl probe file"
    )


def load_probe_file(path: str | Path) -> ProbeSet:
    """Probes from ``path``: ``.txt`` one probe per line, or ``.jsonl`` lines ``{"text": ...}``. Blank lines are
    skipped."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(
            f"{path}: probe file not found; "
            'pass an existing .txt (one probe per line) or .jsonl ({"text": ...} per line) file'
        )
    if path.suffix not in {".txt", ".jsonl"}:
        raise ProbeError(
            f"{path}: unsupported probe file type {path.suffix!r}; "
            'use .txt (one probe per line) or .jsonl ({"text": ...} per line)'
        )
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProbeError(f"{path}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8") from None
    texts: list[str] = []
    for no, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            texts.append(line)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeError(
                f'{path}:{no}: not valid JSON ({exc.msg}); write one {{"text": "..."}} object per line'
            ) from None
        text = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str) or not text:
            raise ProbeError(
                f'{path}:{no}: needs a non-empty string field "text"; write one {{"text": "..."}} object per line'
            )
        texts.append(text)
    if not texts:
        raise ProbeError(f"{path}: holds no probes; add at least one non-blank line")
    return ProbeSet(name=f"file:{path.name}", texts=tuple(texts))


# ------------------------------------------------------------------------------------ built-in sets

# The five probe templates of Delta Activations (Xu, Sethi, Naik, Lim 2025, arXiv:2509.04442), verbatim,
# from the release notebook anonymous68985325/delta_activations : delta_activations.ipynb
# (commit 16cdfc8cf062cba3bc3ee90689acf6fa4096a150), formatted there with
# task_prompt = "Please provide a response." and input_text = "Input." — raw text, no chat template.
_DA_TEMPLATES = (
    (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{task} Input:{input}\n\n### Response:"
    ),
    (
        "The task described below requires a response that completes the request accurately."
        "\n\n### Instruction:\n{task} Input:{input}\n\n### Response:"
    ),
    (
        "Below is a description of a task. Provide a response that aligns with the requirements."
        "\n\n### Instruction:\n{task} Input:{input}\n\n### Response:"
    ),
    (
        "The following instruction outlines a task. Generate a response that meets the specified request."
        "\n\n### Instruction:\n{task} Input:{input}\n\n### Response:"
    ),
    (
        "You are given an instruction and input. Write a response that completes the task as requested."
        "\n\n### Instruction:\n{task} Input:{input}\n\n### Response:"
    ),
)
_DA_TASK = "Please provide a response."
_DA_INPUT = "Input."


@register_probe_set("generic5")
def _generic5() -> ProbeSet:
    return ProbeSet("generic5", tuple(t.format(task=_DA_TASK, input=_DA_INPUT) for t in _DA_TEMPLATES))


# Twenty-four domain-neutral instructions (no task family is favoured: no arithmetic, code, law,
# medicine, puzzles), each in one of the five Delta Activations headers, for probe-count ablations.
_NEUTRAL_INSTRUCTIONS = (
    "Please provide a response.",
    "Respond to the request below.",
    "Answer the following.",
    "Complete the task described here.",
    "Give a short reply.",
    "Write your answer below.",
    "Provide the requested output.",
    "Reply to the message.",
    "Carry out the instruction.",
    "Produce an appropriate response.",
    "Write what is asked.",
    "Give your answer.",
    "Follow the instruction and respond.",
    "Return the result.",
    "Handle the request below.",
    "Address the following request.",
    "Provide a helpful answer.",
    "Respond as instructed.",
    "Deal with the task at hand.",
    "Fulfil the request.",
    "Write a suitable reply.",
    "Generate the response.",
    "Solve the given task.",
    "Provide your output.",
)
_NEUTRAL_INPUTS = ("Input.", "", "See above.", "None.")


@register_probe_set("neutral24")
def _neutral24() -> ProbeSet:
    texts = []
    for i, task in enumerate(_NEUTRAL_INSTRUCTIONS):
        header = _DA_TEMPLATES[i % len(_DA_TEMPLATES)]
        texts.append(header.format(task=task, input=_NEUTRAL_INPUTS[i % len(_NEUTRAL_INPUTS)]))
    return ProbeSet("neutral24", tuple(texts))


__all__ = ["ProbeError", "ProbeSet", "get_probe_set", "load_probe_file", "probe_set_names", "register_probe_set"]
