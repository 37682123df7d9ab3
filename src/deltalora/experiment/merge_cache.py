"""A study's merge cache: merged adapters that are slow to compute, kept on disk so a resumed or repeated call of a
study reads them back instead of merging again.

The dense merges (TIES, DARE: every slot's ΔW formed, trimmed or dropped, combined, then cut back to rank r by an
SVD) take about 36 s for three r8 teachers of the 0.5B backbone on 2 CPU cores (98 s with PEFT's own trim and SVD;
see :mod:`deltalora.lora.merge`), and a study makes dozens of them (the held-out preset's TIES retrieval row: one
per task, seed and condition). Each call of a study rebuilds its candidates before it looks up their scores, so
without this cache every resume paid for every merge again. The merges computed from the factors alone (``avg``,
``svd``) take milliseconds and are not stored.

``<study>/merges/<key>/``: a PEFT adapter directory, ``key`` the sha256 of the method, every merge option (defaults
filled in), the relative weights and each input adapter's content hash — so any change of inputs or options misses.
An entry that does not load (a kill mid-write cannot leave one: adapters are written atomically) is merged again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import AdapterError
from ..lora import LoraWeights, load_adapter, weights_hash
from ..lora.adapter_io import save_adapter
from ..lora.merge import merge_adapters, merge_method

# merge_adapters' keyword options and their defaults, so an option left out and one given at its default share a key
MERGE_OPTIONS = {
    name: p.default
    for name, p in inspect.signature(merge_adapters).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "names"
}


class MergeCache:
    """Merges under ``folder``; :meth:`merge` takes :func:`~deltalora.lora.merge.merge_adapters`' arguments."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def key(
        self, adapters: Sequence[LoraWeights], weights: Sequence[float] | None, method: str, options: dict[str, Any]
    ) -> str:
        unknown = sorted(set(options) - set(MERGE_OPTIONS))
        if unknown:
            raise TypeError(f"unknown merge option(s) {unknown}; use {sorted(MERGE_OPTIONS)}")
        spec = {
            "method": method,
            "weights": None if weights is None else [float(x) for x in weights],
            "options": {**MERGE_OPTIONS, **options},
        }
        h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
        for a in adapters:
            h.update(weights_hash(a).encode())
        return h.hexdigest()[:32]

    def merge(
        self,
        adapters: Sequence[LoraWeights],
        weights: Sequence[float] | None = None,
        method: str = "avg",
        *,
        names: Sequence[str] = (),
        **options: Any,
    ) -> LoraWeights:
        """``merge_adapters(adapters, weights, method, names=names, **options)``, read from the cache when a dense
        method's merge of the same inputs is stored there (and stored after computing it otherwise)."""
        if merge_method(method).combine is None:
            return merge_adapters(adapters, weights, method, names=names, **options)
        path = self.folder / self.key(adapters, weights, method, options)
        if path.is_dir():
            try:
                return load_adapter(path, dtype=torch.float32)
            except AdapterError:  # an unreadable entry is merged again and replaced
                pass
        merged = merge_adapters(adapters, weights, method, names=names, **options)
        save_adapter(merged, path, metadata={"merge": method})
        return merged


__all__ = ["MERGE_OPTIONS", "MergeCache"]
