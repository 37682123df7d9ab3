"""Content-addressed cache of sentence embeddings, one entry per (encoder, text).

A key is the sha256 of the canonical JSON of the encoder's identity (weights id, pooling,
normalisation, max_length, compute dtype), :data:`EMBED_CODE_VERSION` and the exact text — never a
path. Values are stored in a :class:`deltalora.store.TensorStore` (one float32
safetensors file per key, written atomically with temp file + ``os.replace``, the key in its
metadata), so concurrent writers can only ever replace a file with an identical one and a damaged
file reads as a miss. The default root is ``$DELTALORA_HOME/conditions``.

    emb = encode_texts(encoder, texts, cache=EmbeddingCache())   # encodes only the misses, batched
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..paths import home
from ..store import TensorStore
from .encoder import SentenceEncoder

# Bump when a change to the encoding code changes embeddings (tokenisation, pooling, arithmetic).
EMBED_CODE_VERSION = "1"
TENSOR_NAME = "embedding"


def default_cache_dir() -> Path:
    return home() / "conditions"


def embedding_key(encoder: SentenceEncoder, text: str) -> str:
    parts = {"code": EMBED_CODE_VERSION, **encoder.identity, "text": text}
    return hashlib.sha256(
        json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    ).hexdigest()


class EmbeddingCache:
    """Per-text embeddings under ``root`` (default ``$DELTALORA_HOME/conditions``)."""

    def __init__(self, root: str | Path | None = None):
        self._store = TensorStore(Path(root) if root is not None else default_cache_dir())

    @property
    def root(self) -> Path:
        return self._store.root

    def path(self, key: str) -> Path:
        return self._store.path(key)

    def get(self, key: str) -> torch.Tensor | None:
        hit = self._store.get(key, name=TENSOR_NAME)
        return None if hit is None else hit.tensor

    def put(self, key: str, embedding: torch.Tensor, encoder: SentenceEncoder) -> None:
        self._store.put(key, embedding, {"encoder": encoder.name, **encoder.identity}, name=TENSOR_NAME)


def encode_texts(
    encoder: SentenceEncoder,
    texts: Sequence[str],
    cache: EmbeddingCache | str | Path | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Embeddings of ``texts`` in order, float32 [len(texts), dim].

    With a cache only the misses are encoded (each distinct text once, in batches of ``batch_size``) and
    written back; a cached entry whose width differs from the encoder's reads as a miss.
    """
    texts = list(texts)
    if cache is not None and not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache(cache)
    unique = list(dict.fromkeys(texts))
    found: dict[str, torch.Tensor] = {}
    keys: dict[str, str] = {}
    if cache is not None:
        for t in unique:
            keys[t] = embedding_key(encoder, t)
            hit = cache.get(keys[t])
            if hit is not None and hit.shape == (encoder.dim,):
                found[t] = hit
    misses = [t for t in unique if t not in found]
    if misses:
        new = encoder.encode(misses, batch_size=batch_size)
        for t, v in zip(misses, new):
            found[t] = v
            if cache is not None:
                cache.put(keys[t], v, encoder)
    if not texts:
        return torch.empty(0, encoder.dim)
    return torch.stack([found[t] for t in texts])


__all__ = ["EMBED_CODE_VERSION", "EmbeddingCache", "default_cache_dir", "embedding_key", "encode_texts"]
