"""The training teachers as a library a generator may read: the zoo's canonical init and the teachers themselves.

    lib = TeacherLibrary.from_zoo("zoo/", ids, arch)        # the training loop builds it from its dataset
    gen = build_generator("mixture", layout, cond_dim, n_prompts, library=lib)
    gen = build_generator("compact", layout, cond_dim, n_prompts, library=lib)   # A0 = the zoo's common A

Two generators use it:

- ``compact`` takes its fixed base A (``A0``) from the zoo's canonical init, so that ``B`` is learned in the
  coordinates every teacher's ``B`` lives in (teachers of a canonical zoo all start from one A and barely
  move it). The A0 it used is saved with the generator: the checkpoint stands alone.
- ``mixture`` outputs a condition-weighted mixture of the teachers. The teachers are data, not parameters:
  the checkpoint records where they are (the zoo directory, the teacher ids and a hash of their manifest
  entries) and :meth:`TeacherLibrary.from_reference` reads them back, refusing a zoo that changed.

A builder called to rebuild a checkpoint gets ``library=FROM_CHECKPOINT``: shapes only, the values come from
the saved state (and, for ``mixture``, from the recorded reference).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..backbones.architecture import Architecture
from ..errors import ConfigError
from ..lora import LoraWeights, load_adapter
from ..zoo.canonical import read_init
from ..zoo.manifest import ZooEntry, adapter_dir, read_manifest

FROM_CHECKPOINT = "from-checkpoint"  # ``library=`` of a builder that rebuilds a saved generator


class LibraryError(ConfigError):
    """A teacher library cannot be read: zoo missing, changed, or of another layout."""


class LibraryNeeded(ConfigError):
    """A generator built without the teacher library it reads (its size and weights depend on it)."""


def teachers_sha256(entries: Sequence[ZooEntry]) -> str:
    """The hash that names a set of zoo teachers: of their sorted (id, adapter sha256) pairs, as the manifest records
    them. A saved generator or retrieval index records it, and refuses a zoo whose teachers changed."""
    return _fingerprint([(e.id, e.sha256) for e in entries])


def _fingerprint(pairs: Sequence[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps(sorted(pairs)).encode()).hexdigest()


@dataclass
class TeacherLibrary:
    """Teachers of one layout (stacked, float32), the task group of each, and the zoo's canonical init."""

    zoo: Path
    ids: tuple[str, ...]
    groups: tuple[str, ...]  # the tasks a teacher was trained on, joined by "+" (its mixed components)
    weights: LoraWeights  # [N] stacked
    init: LoraWeights | None  # the zoo's canonical init (A = the common A, B = 0); None: not a canonical zoo
    sha256: str  # of the teachers' (id, adapter sha256) pairs, as the manifest records them

    @classmethod
    def from_zoo(
        cls,
        zoo: str | Path,
        ids: Sequence[str],
        arch: Architecture | None,
        weights: LoraWeights | None = None,
    ) -> TeacherLibrary:
        """The teachers ``ids`` of ``zoo`` (loaded unless ``weights`` already holds them, stacked in that order)."""
        zoo = Path(zoo).resolve()
        if not ids:
            raise LibraryError(f"{zoo}: a teacher library needs at least one teacher")
        chosen = _entries(zoo, ids)
        if weights is None:
            weights = LoraWeights.stack([load_adapter(adapter_dir(zoo, e), arch, dtype=torch.float32) for e in chosen])
        if weights.num_adapters != len(ids):
            raise ValueError(f"{weights.num_adapters} adapters for {len(ids)} teacher ids")
        init = read_init(zoo, arch)
        if init is not None and init.layout.signature != weights.layout.signature:
            init = None  # the zoo's init is of another LoRA layout than these teachers: not their common A
        groups = tuple("+".join(e.tasks) if e.tasks else e.task for e in chosen)
        return cls(zoo, tuple(ids), groups, weights, init, teachers_sha256(chosen))

    @classmethod
    def from_reference(cls, ref: dict, arch: Architecture | None) -> TeacherLibrary:
        """Read back the library a saved generator recorded (:meth:`reference`), checking it is unchanged."""
        check_reference(ref)
        return cls.from_zoo(Path(str(ref["zoo"])), list(ref.get("ids", [])), arch)

    def reference(self) -> dict:
        """What a checkpoint records to find the library again (JSON-able)."""
        return {"zoo": str(self.zoo), "ids": list(self.ids), "sha256": self.sha256}

    def __len__(self) -> int:
        return len(self.ids)

    def group_means(self) -> tuple[tuple[str, ...], LoraWeights]:
        """One adapter per task group: the mean A and the mean B of its teachers (groups in first-seen order)."""
        order = tuple(dict.fromkeys(self.groups))
        rows = [[i for i, g in enumerate(self.groups) if g == name] for name in order]
        w = self.weights
        A = {k: torch.stack([v[r].mean(0) for r in rows]) for k, v in w.A.items()}
        B = {k: torch.stack([v[r].mean(0) for r in rows]) for k, v in w.B.items()}
        return order, LoraWeights(w.layout, A, B)


def _entries(zoo: Path, ids: Sequence[str]) -> list[ZooEntry]:
    """The manifest entries of teachers ``ids`` of ``zoo``, in that order."""
    entries = {e.id: e for e in read_manifest(zoo)}
    missing = [i for i in ids if i not in entries]
    if missing:
        raise LibraryError(
            f"{zoo}: teacher(s) {missing[:3]} of the library are not in the zoo's manifest; "
            "pass the zoo the generator was trained on"
        )
    return [entries[i] for i in ids]


def check_reference(ref: dict) -> None:
    """Raise :class:`LibraryError` unless the zoo a library reference (:meth:`TeacherLibrary.reference`) names is
    there with the same teachers — from the manifest alone, no adapter is read."""
    zoo = Path(str(ref.get("zoo", "")))
    if not (zoo / "manifest.jsonl").is_file():
        raise LibraryError(
            f"{zoo}: the generator's teacher library (a zoo of {len(ref.get('ids', []))} teachers) is not "
            "there; copy the zoo back to that path or retrain the generator"
        )
    sha = teachers_sha256(_entries(zoo, list(ref.get("ids", []))))
    if sha != ref.get("sha256"):
        raise LibraryError(
            f"{zoo}: the teachers differ from those the generator was trained on (hash {sha[:12]} vs "
            f"{str(ref.get('sha256'))[:12]}); restore the zoo or retrain the generator"
        )


__all__ = ["check_reference", "FROM_CHECKPOINT", "LibraryError", "LibraryNeeded", "TeacherLibrary", "teachers_sha256"]
