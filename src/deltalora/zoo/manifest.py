"""The zoo manifest: one JSON line per finished teacher adapter.

``manifest.jsonl`` sits at the root of a zoo directory; each line is a :class:`ZooEntry` whose
``path`` is relative to that directory. An entry is appended only after its adapter directory is
complete (written atomically), so a killed build never lists a half-written adapter. Readers
validate every line and the adapter bytes against ``sha256``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field, ValidationError

from ..config import StrictModel, validation_message
from ..errors import DeltaLoraError
from ..paths import file_sha256, locked_append

MANIFEST_NAME = "manifest.jsonl"
CONFIG_NAME = "zoo_config.json"  # the resolved config a zoo was built with (zoo.build), beside the manifest


class ZooError(DeltaLoraError):
    """A zoo directory or manifest is missing or inconsistent."""


class ZooEntry(StrictModel):
    id: str  # unique within the zoo, e.g. "letter_counting/s0/step200"
    task: str  # the task trained on ("a+b" for a mixed-task teacher)
    family: str
    tasks: tuple[str, ...] = ()  # the component tasks of a mixed teacher; () for a single-task one
    seed: int = 0
    step: int = Field(0, ge=0)
    path: str  # adapter directory, relative to the zoo root
    sha256: str  # of adapter_model.safetensors
    train_loss: float | None = None
    backbone: str = ""
    extra: dict = {}

    @property
    def mixed(self) -> bool:
        return len(self.tasks) > 1

    @property
    def run(self) -> str:
        """The training run this checkpoint comes from ("<task>/s<seed>"); its checkpoints share it."""
        return f"{self.task}/s{self.seed}"


def append_entry(zoo_dir: Path, entry: ZooEntry) -> None:
    """Append one line under an exclusive lock (shard workers may share a zoo directory)."""
    locked_append(Path(zoo_dir) / MANIFEST_NAME, entry.model_dump_json() + "\n")


def read_manifest(path: Path, verify: bool = False) -> list[ZooEntry]:
    """Entries of ``path`` (a manifest file or a zoo directory), validated; duplicates are an error.

    A trailing partial line (a writer killed mid-line) is ignored; any other bad line is an error
    naming the file and line. With ``verify``, each adapter's safetensors bytes are re-hashed.
    """
    path = Path(path)
    manifest = path / MANIFEST_NAME if path.is_dir() else path
    if not manifest.is_file():
        raise ZooError(
            f"{manifest}: zoo manifest not found; build a zoo with `deltalora zoo build` or pass its directory"
        )
    root = manifest.parent
    raw = manifest.read_text(encoding="utf-8")
    lines = raw.split("\n")
    entries: dict[str, ZooEntry] = {}
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = no == len(lines) and not raw.endswith("\n")
        try:
            entry = ZooEntry.model_validate(json.loads(line))
        except json.JSONDecodeError:
            if last:
                continue  # a partial line from a killed writer
            raise ZooError(f"{manifest}:{no}: not valid JSON; remove or repair the line") from None
        except ValidationError as exc:
            raise ZooError(
                f"{manifest}:{no}: invalid entry ({validation_message(exc)}); remove or repair the line"
            ) from None
        if entry.id in entries:
            raise ZooError(f"{manifest}:{no}: duplicate adapter id {entry.id!r}; remove one of the lines")
        adapter = root / entry.path
        if verify:
            weights = adapter / "adapter_model.safetensors"
            if not weights.is_file() or file_sha256(weights) != entry.sha256:
                raise ZooError(
                    f"{adapter}: adapter missing or its bytes differ from the manifest's sha256; rebuild it or drop "
                    f"line {no}"
                )
        entries[entry.id] = entry
    return list(entries.values())


def last_teachers(entries: Iterable[ZooEntry], task: str) -> dict[int, ZooEntry]:
    """Per zoo seed, the teacher of ``task`` (a task, or a mixed pair's ``"a+b"``) at that seed's last checkpoint."""
    out: dict[int, ZooEntry] = {}
    for e in entries:
        if e.task == task and (e.seed not in out or e.step > out[e.seed].step):
            out[e.seed] = e
    return dict(sorted(out.items()))


def adapter_dir(manifest_or_zoo: Path, entry: ZooEntry) -> Path:
    p = Path(manifest_or_zoo)
    return (p if p.is_dir() else p.parent) / entry.path
