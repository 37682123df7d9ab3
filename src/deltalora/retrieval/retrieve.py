"""Retrieve-and-merge: a condition in, one merged adapter of the k closest training teachers out.

adapter, hits = retrieve_adapter(index, condition, by="delta", k=3, merge="ties")
report = retrieve_to_dir("index.safetensors", "prompts.jsonl", "out/", k=3, merge="avg")   # the CLI's verb
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import RuntimeConfig
from ..errors import ConfigError
from ..generators.inference import (
    condition_items,
    condition_texts,
    encode_condition,
    load_condition_encoder,
    sample_condition,
    texts_sha256,
)
from ..lora import LoraWeights, load_adapter
from ..lora.adapter_io import check_adapter_out, save_adapter
from ..lora.merge import merge_adapters, merge_method
from .index import Hit, RetrievalIndex


def retrieve_adapter(
    index: RetrievalIndex,
    condition: torch.Tensor,
    *,
    by: str = "delta",
    k: int = 3,
    temperature: float = 0.1,
    merge: str = "avg",
    teachers: Callable[[list[Hit]], list[LoraWeights]] | None = None,
    zoo: str | Path | None = None,
    arch=None,
    merger: Callable[..., LoraWeights] = merge_adapters,
    **merge_options: Any,
) -> tuple[LoraWeights, list[Hit]]:
    """Top-``k`` teachers for ``condition`` ([n_prompts, dim]) merged with ``merge`` at their retrieval weights.

    ``teachers(hits)`` supplies the hit adapters (the experiment passes the ones it holds in memory); by default
    they are read from ``zoo`` (default: the index's own), which must be the zoo the index was built on.
    ``merger`` does the merge (``merge_adapters``' signature; a study passes its merge cache's)."""
    merge_method(merge)  # an unknown method fails before any work
    hits = index.retrieve(condition, by=by, k=k, temperature=temperature)
    if teachers is not None:
        adapters = teachers(hits)
    else:
        adapters = [load_adapter(d, arch, dtype=torch.float32) for d in index.adapter_dirs(hits, zoo)]
    merged = merger(adapters, [h.weight for h in hits], merge, names=[h.id for h in hits], **merge_options)
    return merged, hits


def retrieve_to_dir(
    index_path: str | Path,
    prompts: str | Path,
    out: str | Path,
    *,
    zoo: str | Path | None = None,
    by: str = "delta",
    k: int = 3,
    temperature: float = 0.1,
    merge: str = "avg",
    n_prompts: int | None = None,
    seed: int = 0,
    runtime: RuntimeConfig | None = None,
    **merge_options: Any,
) -> dict[str, Any]:
    """Read ``prompts``, retrieve from the index file, merge, write a PEFT adapter to ``out``; returns a report
    naming every teacher used with its cosine and weight. Bad input fails before anything is written."""
    t0 = time.perf_counter()
    out = Path(out)
    check_adapter_out(out)
    merge_method(merge)
    index = RetrievalIndex.load(index_path)
    n = index.n_prompts if n_prompts is None else n_prompts
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n_prompts must be a positive integer, got {n!r}")
    items = condition_items(prompts)
    texts = condition_texts(items, index.form, str(prompts))
    chosen = sample_condition(texts, n, seed)
    encoder = load_condition_encoder(index.encoder, runtime or RuntimeConfig(device="cpu"))
    condition = encode_condition(encoder, chosen)
    merged, hits = retrieve_adapter(
        index, condition, by=by, k=k, temperature=temperature, merge=merge, zoo=zoo, **merge_options
    )
    meta = {
        "retrieval": by,
        "k": str(k),
        "temperature": str(temperature),
        "merge": merge,
        "teachers": ",".join(f"{h.id}:{h.weight:.6f}" for h in hits),
        "condition_sha256": texts_sha256(chosen),
        "prompts_file": Path(prompts).name,
    }
    save_adapter(merged, out, metadata=meta)
    m = merge_method(merge)
    return {
        "out": str(out),
        "by": by,
        "k": k,
        "temperature": temperature,
        "merge": merge,
        "normalisation": m.normalisation,
        "rank": merged.layout.spec.rank,
        "n_prompts": n,
        "seed": seed,
        "num_items": len(items),
        "teachers": [{"id": h.id, "task": h.group, "cosine": round(h.cosine, 6), "weight": h.weight} for h in hits],
        "seconds": round(time.perf_counter() - t0, 3),
    }


__all__ = ["retrieve_adapter", "retrieve_to_dir"]
