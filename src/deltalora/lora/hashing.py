"""Content hashes of in-memory adapters: what the eval and merge caches key an adapter by, and what a resumable
teacher run records of its init."""

from __future__ import annotations

import hashlib

from .weights import LoraWeights


def weights_hash(w: LoraWeights | None, salt: str = "") -> str:
    """sha256 of ``salt`` then every slot's key, A and B (float32 bytes, layout order); 32 hex digits.

    ``None`` (the base model, no adapter) hashes the salt alone.
    """
    h = hashlib.sha256(salt.encode())
    if w is not None:
        for s in w.layout.slots:
            h.update(s.key.encode())
            h.update(w.A[s.key].detach().float().contiguous().numpy().tobytes())
            h.update(w.B[s.key].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


__all__ = ["weights_hash"]
