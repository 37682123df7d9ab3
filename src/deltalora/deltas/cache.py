"""Content-addressed cache of Δ vectors (and of v(B)).

A key is the sha256 of everything that changes the value — backbone weights id, probe-set hash,
representation spec, the content hash of the adapter (or fine-tuned model), compute dtype and
:data:`DELTA_CODE_VERSION` — never a path. Each value is one safetensors file
``objects/<key[:2]>/<key>.safetensors`` holding the float32 tensor ``"delta"`` (or ``"v"`` for a base
activation) and string metadata, written atomically (temp file + ``os.replace``), so concurrent
shard workers can only ever replace a file with an identical one. ``index.jsonl`` maps adapter ids
to Δ files; lines are appended under an exclusive ``fcntl`` lock; the last line for an id wins.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import DeltaLoraError
from ..paths import home, locked_append
from ..store import StoredTensor, TensorStore

# Bump when a change to the extraction code changes Δ values (tokenisation, pooling, arithmetic).
DELTA_CODE_VERSION = "1"
INDEX_NAME = "index.jsonl"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class DeltaCacheError(DeltaLoraError):
    """A cache file or index is unreadable."""


def default_cache_dir() -> Path:
    return home() / "deltas"


def _sha256_file(path: Path, digest=None):
    digest = digest or hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest


def adapter_content_hash(adapter_dir: str | Path) -> str:
    """sha256 over the adapter's safetensors bytes and its canonical (sorted, compact) adapter_config.json."""
    d = Path(adapter_dir)
    digest = hashlib.sha256(b"lora-adapter\0")
    try:
        cfg = json.loads((d / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        digest.update(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode())
        digest.update(b"\0")
        _sha256_file(d / ADAPTER_WEIGHTS, digest)
    except (OSError, ValueError) as exc:
        raise DeltaCacheError(
            f"{d}: cannot hash the adapter ({' '.join(str(exc).split())}); "
            f"pass a PEFT directory with {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
        ) from None
    return digest.hexdigest()


def cache_key(*, backbone: str, probes: str, representation: str, content: str, dtype: str) -> str:
    """sha256 of the canonical JSON of every part that changes the value, plus the code version."""
    parts = {
        "backbone": backbone,
        "code": DELTA_CODE_VERSION,
        "content": content,
        "dtype": dtype,
        "probes": probes,
        "repr": representation,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


CachedDelta = StoredTensor  # what DeltaCache.get returns: key, tensor ([dim] float32), metadata


class DeltaCache(TensorStore):
    """Δ vectors (tensor ``"delta"``) and base activations (``"v"``) in a :class:`TensorStore`, plus ``index.jsonl``."""

    def __init__(self, root: str | Path | None = None):
        super().__init__(root if root is not None else default_cache_dir())

    def get(self, key: str, name: str = "delta") -> StoredTensor | None:
        return super().get(key, name)

    def put(self, key: str, tensor: torch.Tensor, metadata: dict[str, str], name: str = "delta") -> Path:
        return super().put(key, tensor, metadata, name)

    # ---------------------------------------------------------------------------------------- index

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def append_index(self, records: list[dict]) -> None:
        """Append records (one JSON line each) under an exclusive lock; shard workers may share the cache."""
        if not records:
            return
        locked_append(self.index_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def read_index(self) -> list[dict]:
        """All index records; a torn trailing line (a killed writer) is ignored, any other bad line is an error."""
        if not self.index_path.is_file():
            return []
        raw = self.index_path.read_text(encoding="utf-8")
        lines = raw.split("\n")
        out = []
        for no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if no == len(lines) and not raw.endswith("\n"):
                    continue
                raise DeltaCacheError(
                    f"{self.index_path}:{no}: not valid JSON; delete the line (the Δ files are unaffected)"
                ) from None
        return out

    def lookup(self, adapter_id: str, **filters: str) -> dict | None:
        """The latest index record for ``adapter_id`` whose fields match ``filters`` (e.g. probes=, repr=)."""
        found = None
        for r in self.read_index():
            if r.get("adapter") == adapter_id and all(r.get(k) == v for k, v in filters.items()):
                found = r
        return found


__all__ = [
    "DELTA_CODE_VERSION",
    "CachedDelta",
    "DeltaCache",
    "DeltaCacheError",
    "adapter_content_hash",
    "cache_key",
    "default_cache_dir",
]
