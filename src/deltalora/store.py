"""A content-addressed store of float32 tensors: one safetensors file per key, written atomically.

``objects/<key[:2]>/<key>.safetensors`` holds one named tensor and string metadata (the key among them).
Writes go through a temp file and ``os.replace``, so concurrent writers of one key can only replace a file
with an equal one; a damaged file or one whose metadata names another key reads as a miss. The Δ cache
(:class:`deltalora.deltas.DeltaCache`) and the condition-embedding cache are built on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from .paths import atomic_write_bytes, safetensors_bytes


@dataclass
class StoredTensor:
    key: str
    tensor: torch.Tensor
    metadata: dict[str, str]


class TensorStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str, name: str) -> StoredTensor | None:
        """The tensor ``name`` stored under ``key``, or None. A damaged file counts as a miss (it will be rewritten)."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            raw = p.read_bytes()
            tensors = st_load(raw)
            n = int.from_bytes(raw[:8], "little")
            meta = json.loads(raw[8 : 8 + n]).get("__metadata__", {}) or {}
        except (OSError, SafetensorError, ValueError):
            return None
        if name not in tensors or meta.get("key") != key:
            return None
        return StoredTensor(key, tensors[name], meta)

    def put(self, key: str, tensor: torch.Tensor, metadata: dict[str, str], name: str) -> Path:
        """Write ``tensor`` (stored float32) atomically under ``key``; metadata values are stored as strings."""
        meta = {"format": "pt", **{k: str(v) for k, v in metadata.items()}, "key": key}
        p = self.path(key)
        atomic_write_bytes(p, safetensors_bytes({name: tensor.detach().to("cpu", torch.float32).contiguous()}, meta))
        return p


__all__ = ["StoredTensor", "TensorStore"]
