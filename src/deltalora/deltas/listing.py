"""Listings around Δ: the registered probe sets, and how a zoo's manifest labels rows of a Δ matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..zoo.manifest import adapter_dir, read_manifest
from .probes import ProbeSet, get_probe_set, probe_set_names


def probe_sets(name: str | None = None) -> list[ProbeSet]:
    """The probe set ``name`` (registered name or a .txt/.jsonl probe file) alone, or every registered one."""
    return [get_probe_set(n) for n in ([name] if name else probe_set_names())]


@dataclass(frozen=True)
class ZooLabels:
    """Per Δ row: the adapter's family, its directory and its (task, training run, step)."""

    families: list[str]
    dirs: list[Path]
    runs: list[tuple[str, str, int]]


def zoo_labels(zoo: str | Path, ids: Sequence[str]) -> ZooLabels:
    """Join Δ rows (adapter ``ids``, e.g. of :meth:`DeltaReport.load`) with the zoo's manifest (a ``manifest.jsonl``
    or its directory); a KeyError names an id the manifest does not list."""
    entries = {e.id: e for e in read_manifest(Path(zoo))}
    rows = [entries[i] for i in ids]
    return ZooLabels(
        families=[e.family for e in rows],
        dirs=[adapter_dir(Path(zoo), e) for e in rows],
        runs=[(e.task, e.run, e.step) for e in rows],
    )


__all__ = ["ZooLabels", "probe_sets", "zoo_labels"]
