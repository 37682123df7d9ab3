"""Probe sets: the fixed prompts whose hidden states define v(M), each identified by the hash of its texts.

A probe set is registered by name with :func:`register_probe_set` (one function, lm-eval style) or
read from a user file with :func:`load_probe_file`. :func:`get_probe_set` resolves either. The
cache keys on :attr:`ProbeSet.sha256` — the exact texts — never on the name, so editing a probe
invalidates every Δ computed with it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeltaLoraError
from ..registry import Registry
from ..tasks import Task, TaskItem, format_prompt, stable_seed


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
    if is_task_probes(key):
        parse_task_probes(key)  # a malformed spec gets its own message
        raise ProbeError(
            f"{key}: task probes differ per teacher (its own task's prompts); they need the teachers' tasks — pass a "
            "zoo (deltalora deltas compute --zoo DIR) or use deltalora.deltas.TaskProbes"
        )
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


# ------------------------------------------------------------------------------------ task probes

TASK_PROBES = "task:"
TASK_PROBE_SPLITS = ("train",)  # never condition or eval items: those condition the generator and score it


@dataclass(frozen=True)
class TaskProbeSpec:
    """``task:<split>:<n>[:<seed>]``: for every teacher, ``n`` prompts of its own task's ``split`` (for a mixed
    teacher, of the union of its tasks'), a seeded sample formatted with the chat template exactly as the teacher
    was trained on them (:func:`deltalora.tasks.format_prompt`)."""

    split: str = "train"
    n: int = 16
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{TASK_PROBES}{self.split}:{self.n}" + (f":{self.seed}" if self.seed else "")


def is_task_probes(name: object) -> bool:
    return isinstance(name, str) and name.startswith(TASK_PROBES)


def parse_task_probes(spec: str) -> TaskProbeSpec:
    """``"task:train:16"`` (or ``task:train:16:SEED``) -> :class:`TaskProbeSpec`; a one-line error otherwise."""
    parts = spec.split(":")
    usage = "write task:train:N[:SEED], e.g. task:train:16"
    if len(parts) not in (3, 4) or parts[0] + ":" != TASK_PROBES:
        raise ProbeError(f"task probes {spec!r}: {usage}")
    split = parts[1]
    if split not in TASK_PROBE_SPLITS:
        raise ProbeError(
            f"task probes {spec!r}: split {split!r} is not allowed (condition and eval items condition and score the "
            f"generator, so they are never probes); {usage}"
        )
    try:
        n, seed = int(parts[2]), int(parts[3]) if len(parts) == 4 else 0
    except ValueError:
        raise ProbeError(f"task probes {spec!r}: N and SEED must be integers; {usage}") from None
    if n < 1 or seed < 0:
        raise ProbeError(f"task probes {spec!r}: N must be ≥ 1 and SEED ≥ 0; {usage}")
    return TaskProbeSpec(split, n, seed)


def task_probe_items(spec: TaskProbeSpec, tasks: Sequence[Task]) -> list[tuple[Task, TaskItem]]:
    """The items behind a teacher's task probes: ``spec.n`` of its tasks' ``spec.split`` items, sampled without
    replacement (a function of the task names and ``spec.seed``). Every teacher gets exactly ``n``, so adapters of
    different tasks batch together: a task with fewer items is an error that names the largest ``n`` it allows."""
    names = [t.name for t in tasks]
    pool = [(t, it) for t in tasks for it in t.split(spec.split)]
    if len(pool) < spec.n:
        raise ProbeError(
            f"task probes {spec.name}: {'+'.join(names)} has {len(pool)} {spec.split} items, fewer than {spec.n}; "
            f"use task:{spec.split}:{max(1, len(pool))} or fewer"
        )
    rng = random.Random(stable_seed("task-probes", spec.split, spec.seed, *names))
    return rng.sample(pool, spec.n)


def task_probe_set(spec: TaskProbeSpec, tasks: Sequence[Task], tokenizer) -> ProbeSet:
    """The probes of a teacher trained on ``tasks`` (one task, or a mixed teacher's components): the prompts of
    :func:`task_probe_items`, formatted as the teacher saw them."""
    names = [t.name for t in tasks]
    texts = tuple(format_prompt(tokenizer, t, it) for t, it in task_probe_items(spec, tasks))
    return ProbeSet(f"{TASK_PROBES}{'+'.join(names)}:{spec.split}:{spec.n}", texts)


class TaskProbes:
    """Resolves each teacher's probe set from its tasks (``probe_set(("rg_gcd",))``), memoised; ``name`` is the
    spec (``task:train:16``) that reports and configs use."""

    def __init__(self, spec: TaskProbeSpec | str, tasks: Mapping[str, Task], tokenizer):
        self.spec = spec if isinstance(spec, TaskProbeSpec) else parse_task_probes(spec)
        self.tasks = dict(tasks)
        self.tokenizer = tokenizer
        self._sets: dict[tuple[str, ...], ProbeSet] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    def items(self, components: Sequence[str]) -> list[tuple[Task, TaskItem]]:
        """The (task, item) pairs behind ``probe_set(components)``, in the same order."""
        return task_probe_items(self.spec, [self._task(t) for t in components])

    def _task(self, name: str) -> Task:
        if name not in self.tasks:
            raise ProbeError(
                f"task probes {self.name}: no task {name!r} among the {len(self.tasks)} tasks given; pass the zoo's "
                "config (the suite it was built from)"
            )
        return self.tasks[name]

    def probe_set(self, components: Sequence[str]) -> ProbeSet:
        key = tuple(components)
        if not key:
            raise ProbeError(f"task probes {self.name}: an adapter without a task has no task probes; pass a zoo")
        if key not in self._sets:
            missing = [t for t in key if t not in self.tasks]
            if missing:
                raise ProbeError(
                    f"task probes {self.name}: no task {missing[0]!r} among the {len(self.tasks)} tasks given; pass "
                    "the zoo's config (the suite it was built from)"
                )
            self._sets[key] = task_probe_set(self.spec, [self.tasks[t] for t in key], self.tokenizer)
        return self._sets[key]


def resolve_probes(name: str, tasks: Mapping[str, Task], tokenizer) -> str | TaskProbes:
    """A probe setting as the Δ code takes it: a probe set's name (or file) unchanged, or ``task:…`` resolved to
    :class:`TaskProbes` over ``tasks`` (name -> Task; unused otherwise) and the backbone's tokenizer."""
    return TaskProbes(name, tasks, tokenizer) if is_task_probes(name) else name


__all__ = [
    "TASK_PROBES",
    "ProbeError",
    "ProbeSet",
    "TaskProbeSpec",
    "TaskProbes",
    "get_probe_set",
    "is_task_probes",
    "load_probe_file",
    "parse_task_probes",
    "probe_set_names",
    "register_probe_set",
    "resolve_probes",
    "task_probe_items",
    "task_probe_set",
]
