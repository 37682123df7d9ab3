"""Optional Ray Data backend for teacher Δ extraction (``pip install 'deltalora[ray]'``).

Same inputs, outputs and cache as :func:`deltalora.deltas.compute_deltas`; only where the forwards run
differs. The driver does the cheap part with the backbone it already holds: v(B) (computed once and
cached, so no actor recomputes it), content hashes, cache lookups and broken-path checks. The misses
become a Ray dataset of adapter items in blocks of exactly K, mapped with ``map_batches`` over an
``ActorPoolStrategy`` pool: each actor loads the backbone once in ``__init__`` (by name, and checks
that its weights hash equals the driver's) and runs every batch of K adapters through
:meth:`DeltaExtractor.compute` — one forward per K adapters of a layout, written straight into the
shared :class:`DeltaCache` (atomic temp-file + rename writes, so concurrent actors and shard
workers can only replace a file with an identical one). The driver appends the index lines once,
under the cache's lock, and builds the same :class:`DeltaReport` as the local path.

Groups: for adapters of one layout the K-blocks are the groups the local path forms (its misses in
sorted-id order, K at a time). For a mix of layouts each actor groups by layout within its block,
where the local path groups across the whole list, so a few forwards hold fewer adapters.

    import ray; ray.init(num_cpus=8)
    report = compute_deltas_ray(backbone, sources_from_manifest("zoo/"), num_actors=4)

``ray`` is imported only inside this module's functions; importing the module needs no Ray.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ..backbones import Backbone, load_backbone
from ..backbones.registry import is_registered
from ..config import RuntimeConfig
from ..errors import DeltaLoraError
from .cache import DeltaCache
from .extract import (
    DeltaError,
    DeltaExtractor,
    DeltaReport,
    DeltaResult,
    DeltaSource,
    _progress,
    parse_shard,
    select_shard,
    warn_if_broken,
)
from .probes import ProbeSet, get_probe_set
from .represent import Representation, parse_representation

RAY_HINT = "pip install 'deltalora[ray]'"


def require_ray():
    """The ``ray`` module with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise DeltaError(f"the Ray backend needs ray[data] ({exc}); {RAY_HINT}, or use --backend local") from None
    return ray


def _result_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("kind", pa.string()),
            ("status", pa.string()),
            ("family", pa.string()),
            ("path", pa.string()),
            ("key", pa.string()),
            ("file", pa.string()),
            ("norm", pa.float64()),
            ("error", pa.string()),
        ]
    )


class DeltaActor:
    """One Ray actor: the backbone loaded once, then ``__call__`` computes the Δ of a batch of adapter items."""

    def __init__(
        self,
        backbone: str,
        runtime: dict,
        weights_id: str,
        probes: ProbeSet,
        representation: str,
        cache_root: str,
        batch_adapters: int,
        threads: int,
    ):
        torch.set_num_threads(threads)
        loaded = load_backbone(backbone, RuntimeConfig(**runtime), fetch_missing=False, progress=False)
        if loaded.weights_id != weights_id:
            raise DeltaError(
                f"backbone {backbone!r} loaded in a Ray actor has weights {loaded.weights_id[:12]}, "
                f"the driver's has {weights_id[:12]}; "
                "give every node the same backbone files (a registered name fetched everywhere, or a shared directory)"
            )
        self.extractor = DeltaExtractor(loaded, probes, representation, DeltaCache(cache_root), batch_adapters)
        self.extractor.base_activation()  # cached by the driver: a read, not a forward

    def __call__(self, batch):
        import pyarrow as pa

        todo = [(DeltaSource(r["id"], Path(r["path"]), r["kind"], r["family"]), r["key"]) for r in batch.to_pylist()]
        results = [asdict(r) for r in self.extractor.compute(todo)]
        return pa.Table.from_pylist(results, schema=_result_schema())


def _loadable_name(backbone: Backbone) -> str:
    """What an actor passes to ``load_backbone``: the registered name or HF id as given, a local directory made
    absolute."""
    if not is_registered(backbone.name) and Path(backbone.name).exists():
        return os.path.abspath(backbone.name)
    return backbone.name


def _actor_device(backbone: Backbone) -> tuple[str, float]:
    """(device for the actors' RuntimeConfig, GPUs per actor): CUDA backbones get one GPU per actor."""
    if backbone.device.type == "cuda":
        return "cuda", 1.0
    return str(backbone.device), 0.0


def compute_deltas_ray(
    backbone: Backbone,
    sources: Sequence[DeltaSource],
    probes: ProbeSet | str = "generic5",
    representation: Representation | str = "last_token",
    cache: DeltaCache | str | Path | None = None,
    batch_adapters: int = 8,
    shard: tuple[int, int] | str | None = None,
    progress: bool = False,
    num_actors: int = 2,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
) -> DeltaReport:
    """:func:`~deltalora.deltas.compute_deltas` on a Ray Data actor pool of ``num_actors`` (see the module doc).

    Uses the running Ray session, or starts one with ``ray.init()`` (which honours ``RAY_ADDRESS``).
    ``backbone`` must be loadable by name on every node (a registered name, a shared directory or an
    HF id); each actor checks that its copy hashes like the driver's. Torch runs ``cpus_per_actor``
    threads per actor; CUDA backbones get ``gpus_per_actor`` (default 1) GPUs per actor.
    """
    ray = require_ray()
    from ray.data import ActorPoolStrategy, DataContext

    if num_actors < 1:
        raise DeltaError(f"--ray-actors must be >= 1, got {num_actors}")
    if isinstance(shard, str):
        shard = parse_shard(shard)
    t0 = time.perf_counter()
    sources = select_shard(sources, shard)
    probe_set = probes if isinstance(probes, ProbeSet) else get_probe_set(probes)
    rep = parse_representation(representation) if isinstance(representation, str) else representation
    cache = cache if isinstance(cache, DeltaCache) else DeltaCache(cache)
    extractor = DeltaExtractor(backbone, probe_set, rep, cache, batch_adapters)
    indexed = extractor.indexed()
    extractor.base_activation()

    results: dict[str, DeltaResult] = {}
    todo: list[dict] = []
    given_path: dict[str, str] = {}
    for src in sources:
        key, res = extractor.lookup(src)
        if res is not None:
            results[src.id] = res
            warn_if_broken(res)
            continue
        given_path[src.id] = str(src.path)
        todo.append(
            {"id": src.id, "path": os.path.abspath(src.path), "kind": src.kind, "family": src.family, "key": key}
        )

    if todo:
        if not ray.is_initialized():
            ray.init()
        import pyarrow as pa

        k = extractor.k
        item_schema = pa.schema(
            [
                ("id", pa.string()),
                ("path", pa.string()),
                ("kind", pa.string()),
                ("family", pa.string()),
                ("key", pa.string()),
            ]
        )
        blocks = [pa.Table.from_pylist(todo[i : i + k], schema=item_schema) for i in range(0, len(todo), k)]
        device, gpus = _actor_device(backbone)
        ctx = DataContext.get_current()
        bars = ctx.enable_progress_bars
        ctx.enable_progress_bars = False  # one bar, ours, like the local path
        bar = _progress(len(sources), progress)
        bar.update(len(results))
        try:
            ds = ray.data.from_arrow(blocks).map_batches(
                DeltaActor,
                fn_constructor_kwargs=dict(
                    backbone=_loadable_name(backbone),
                    runtime={**backbone.runtime.model_dump(), "device": device},
                    weights_id=backbone.weights_id,
                    probes=probe_set,
                    representation=rep.spec,
                    cache_root=str(cache.root.absolute()),
                    batch_adapters=k,
                    threads=max(1, math.floor(cpus_per_actor)),
                ),
                batch_size=k,
                batch_format="pyarrow",
                compute=ActorPoolStrategy(size=min(num_actors, len(blocks))),
                num_cpus=cpus_per_actor,
                num_gpus=gpus if gpus_per_actor is None else gpus_per_actor,
            )
            names = [f.name for f in fields(DeltaResult)]
            for row in ds.iter_rows():
                res = DeltaResult(**{n: row[n] for n in names})
                if res.id not in given_path or res.id in results:
                    raise DeltaError(
                        f"the Ray pipeline returned {res.id!r} unexpectedly (twice, or never asked); "
                        "rerun — the cache keeps what is done"
                    )
                res.path = given_path[res.id]
                results[res.id] = res
                warn_if_broken(res)
                bar.update(1)
        except DeltaLoraError:
            raise
        except Exception as exc:  # a Ray task or actor failure: one line, the cache keeps the finished Δ
            msg = " ".join(str(exc).split())
            raise DeltaError(
                f"the Ray Δ pipeline failed ({type(exc).__name__}: {msg[:300]}); rerun to resume from the cache"
            ) from exc
        finally:
            ctx.enable_progress_bars = bars
            bar.close()
        missing = [s.id for s in sources if s.id not in results]
        if missing:
            raise DeltaError(
                f"the Ray pipeline returned no result for {len(missing)} sources (first {missing[0]!r}); "
                "rerun to resume from the cache"
            )
    return extractor.report(sources, results, indexed, t0)


__all__ = ["DeltaActor", "RAY_HINT", "compute_deltas_ray", "require_ray"]
