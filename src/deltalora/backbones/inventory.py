"""What ``deltalora models`` reports: the registered backbones with their cache state, and fetch-then-load."""

from __future__ import annotations

import time
from typing import Any

from . import packaged
from .loader import fetch, load_backbone
from .registry import backbone_names, get_spec


def is_ready(name: str) -> bool:
    """Whether a registered backbone loads offline: tiny ones are built in-process, others need the cache."""
    spec = get_spec(name)
    return spec.kind == "tiny" or packaged.is_cached(spec)


def list_backbones() -> list[dict[str, Any]]:
    """Every registered backbone's summary (name, kind, architecture, ...) and ``cached``: whether it loads offline."""
    return [{**get_spec(name).summary(), "cached": is_ready(name)} for name in backbone_names()]


def fetch_backbone(name: str, source: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Fetch (download, verify, cache) a registered backbone, then load it once; idempotent.

    Returns name, path, ``already_cached`` (before this call), the fetch and load times in seconds (rounded to
    0.01 s), weights_id, the parameter count and, for cached kinds, the cache marker.
    """
    spec = get_spec(name)
    was_cached = is_ready(name)
    t0 = time.perf_counter()
    path = fetch(name, source=source, progress=progress)
    fetch_s = time.perf_counter() - t0
    b = load_backbone(name, progress=False)
    info = {
        "name": name,
        "path": str(path),
        "already_cached": was_cached,
        "fetch_seconds": round(fetch_s, 2),
        "load_seconds": round(b.load_seconds, 2),
        "weights_id": b.weights_id,
        "parameters": sum(p.numel() for p in b.model.parameters()),
    }
    if spec.kind != "tiny":
        info["marker"] = packaged.read_marker(path)
    return info


__all__ = ["fetch_backbone", "is_ready", "list_backbones"]
