"""Teacher Δ extraction: v(M) − v(B) for many adapters (Mode A) or fine-tuned models (Mode B).

The backbone is loaded once by the caller. v(B) is computed once per (backbone, probe set,
representation, dtype) and cached. LoRA adapters are evaluated K per forward: the batch is K
adapter-major blocks of the P probes and :func:`deltalora.lora.inject` routes block k through
adapter k (no model wrapper, no per-adapter reload, no LM head). Fine-tuned checkpoints of the same
architecture are loaded one at a time. Broken inputs (NaN/Inf weights, unreadable or mismatched
files) are named, skipped with a warning and reported; they never stop the job.

    backbone = load_backbone("qwen2.5-coder-0.5b-instruct")
    report = compute_deltas(backbone, sources_from_manifest("zoo/"), probes="generic5")
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..backbones import Backbone
from ..backbones.architecture import Architecture
from ..backbones.loader import weights_id_of_dir
from ..errors import DeltaLoraError
from ..lora import LoraWeights, load_adapter
from ..sharding import parse_shard, take_shard
from ..zoo.manifest import adapter_dir, read_manifest
from .cache import DeltaCache, DeltaCacheError
from .forward import lora_activations
from .probes import ProbeSet, TaskProbes, get_probe_set
from .represent import Representation, encode_probes, parse_representation
from .spec import DeltaSpec, lora_content

log = logging.getLogger("deltalora.deltas")

OUTLIER_MIN_GROUP = 5  # fewer Δ than this in a family: no outlier test
OUTLIER_Z = 3.5  # robust z-score (0.6745·|x − median| / MAD) above which a Δ norm is flagged


class DeltaError(DeltaLoraError):
    """A Δ job is misconfigured (bad shard, duplicate ids, no sources)."""


class BrokenSource(DeltaLoraError):
    """One adapter or model cannot be used; the job skips it and reports this message."""


# ------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class DeltaSource:
    """One thing to compute Δ for: a PEFT LoRA directory (``kind="lora"``) or a model directory (``"model"``)."""

    id: str
    path: Path
    kind: str = "lora"
    family: str | None = None
    tasks: tuple[str, ...] = ()  # the tasks it was trained on (a zoo entry's): what task probes are drawn from


def sources_from_adapters(dirs: Iterable[str | Path]) -> list[DeltaSource]:
    return _unique([DeltaSource(id=os.path.normpath(str(d)), path=Path(d), kind="lora") for d in dirs])


def sources_from_models(dirs: Iterable[str | Path]) -> list[DeltaSource]:
    return _unique([DeltaSource(id=os.path.normpath(str(d)), path=Path(d), kind="model") for d in dirs])


def sources_from_manifest(manifest: str | Path) -> list[DeltaSource]:
    """Every entry of a zoo manifest (a ``manifest.jsonl`` or its zoo directory), with its family."""
    return _unique(
        [
            DeltaSource(
                id=e.id,
                path=adapter_dir(Path(manifest), e),
                kind="lora",
                family=e.family,
                tasks=tuple(e.tasks) if e.tasks else (e.task,),
            )
            for e in read_manifest(Path(manifest))
        ]
    )


def _unique(sources: list[DeltaSource]) -> list[DeltaSource]:
    seen: set[str] = set()
    for s in sources:
        if s.id in seen:
            raise DeltaError(f"{s.path}: given twice (id {s.id!r}); pass each adapter or model once")
        seen.add(s.id)
    return sources


def select_shard(sources: Sequence[DeltaSource], shard: tuple[int, int] | None) -> list[DeltaSource]:
    """Sources sorted by id; with shard (i, n) every n-th starting at i — disjoint and covering over i."""
    return take_shard(sorted(sources, key=lambda s: s.id), shard)


# ------------------------------------------------------------------------------------------ results


@dataclass
class DeltaResult:
    id: str
    kind: str
    status: str  # "computed" | "cached" | "broken"
    family: str | None = None
    path: str = ""
    key: str | None = None
    file: str | None = None
    norm: float | None = None
    error: str | None = None


@dataclass
class DeltaReport:
    backbone: str
    weights_id: str
    probes: str
    probes_sha256: str
    representation: str
    dtype: str
    cache_dir: str
    base_key: str
    results: list[DeltaResult] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> list[DeltaResult]:
        return [r for r in self.results if r.status != "broken"]

    @property
    def broken(self) -> list[DeltaResult]:
        return [r for r in self.results if r.status == "broken"]

    def counts(self) -> dict[str, int]:
        c = {"computed": 0, "cached": 0, "broken": 0}
        for r in self.results:
            c[r.status] += 1
        return c

    def load(self, cache: DeltaCache | None = None) -> tuple[list[str], torch.Tensor]:
        """(ids, [N, dim] float32 Δ matrix) of every usable result, in result order."""
        cache = cache or DeltaCache(self.cache_dir)
        ids, rows = [], []
        for r in self.ok:
            hit = cache.get(r.key)
            if hit is None:
                raise DeltaCacheError(
                    f"{cache.path(r.key)}: Δ of {r.id} vanished from the cache; rerun `deltalora deltas compute`"
                )
            ids.append(r.id)
            rows.append(hit.tensor)
        return ids, torch.stack(rows) if rows else torch.empty(0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["counts"] = self.counts()
        return d


def warn_if_broken(res: DeltaResult) -> None:
    """Name a skipped source once, as a warning and a log line (the job goes on)."""
    if res.status == "broken":
        warnings.warn(f"skipping {res.kind} {res.id}: {res.error}", stacklevel=3)
        log.warning("broken %s %s: %s", res.kind, res.id, res.error)


# ------------------------------------------------------------------------------------------ extractor


class DeltaExtractor:
    """Δ of adapters and models against one loaded backbone, for one probe set and representation."""

    def __init__(
        self,
        backbone: Backbone,
        probes: ProbeSet | str = "generic5",
        representation: Representation | str = "last_token",
        cache: DeltaCache | str | Path | None = None,
        batch_adapters: int = 8,
    ):
        if batch_adapters < 1:
            raise DeltaError(f"batch_adapters must be >= 1, got {batch_adapters}")
        self.backbone = backbone
        self.probes = probes if isinstance(probes, ProbeSet) else get_probe_set(probes)
        self.rep = parse_representation(representation)
        self.cache = cache if isinstance(cache, DeltaCache) else DeltaCache(cache)
        self.k = batch_adapters
        self.spec = DeltaSpec.for_backbone(backbone, self.probes, self.rep)
        self.dtype = self.spec.dtype
        self.enc = encode_probes(backbone.tokenizer, self.probes.texts, device=backbone.device)
        self._base: torch.Tensor | None = None

    # -------------------------------------------------------------------------------------- keys

    def key(self, content: str) -> str:
        return self.spec.key_for(content)

    @property
    def base_key(self) -> str:
        return self.key("base")

    def identity(self) -> dict[str, str]:
        """What produced a Δ (stored beside it in the file's metadata and in the index)."""
        return self.spec.identity()

    def _meta(self, **extra) -> dict[str, str]:
        return {**self.identity(), **{k: "" if v is None else str(v) for k, v in extra.items()}}

    # -------------------------------------------------------------------------------------- math

    @torch.no_grad()
    def activation(self, model: torch.nn.Module | None = None) -> torch.Tensor:
        """v(M) of a causal LM (default: the backbone), float32 [dim]; no LoRA injected."""
        model = self.backbone.model if model is None else model
        return lora_activations(model, self.enc, self.rep, None, len(self.probes))[0]

    def base_activation(self) -> torch.Tensor:
        """v(B), computed once and cached under (backbone weights, probes, representation, dtype)."""
        if self._base is None:
            hit = self.cache.get(self.base_key, name="v")
            if hit is not None:
                self._base = hit.tensor.to(self.backbone.device)
            else:
                self._base = self.activation()
                self.cache.put(
                    self.base_key, self._base, self._meta(adapter="__base__", norm=float(self._base.norm())), name="v"
                )
        return self._base

    @torch.no_grad()
    def lora_deltas(self, weights: LoraWeights) -> torch.Tensor:
        """Δ of each adapter of a batched ``LoraWeights`` ([K, dim], float32), all K in one forward."""
        if weights.num_adapters is None:
            weights = LoraWeights.stack([weights])
        v = lora_activations(
            self.backbone.model, self.enc, self.rep, weights.to(self.backbone.device), len(self.probes)
        )
        return v - self.base_activation()

    # -------------------------------------------------------------------------------------- jobs

    def run(self, sources: Sequence[DeltaSource], progress: bool = False) -> DeltaReport:
        """Δ for every source, cache hits skipped; returns a report in the order of ``sources``."""
        t0 = time.perf_counter()
        results: dict[str, DeltaResult] = {}
        indexed = self.indexed()
        bar = _progress(len(sources), progress)

        def finish(res: DeltaResult) -> None:
            results[res.id] = res
            warn_if_broken(res)
            bar.update(1)

        def misses() -> Iterator[tuple[DeltaSource, str]]:
            for src in sources:
                key, res = self.lookup(src)
                if res is None:
                    yield src, key
                else:
                    finish(res)

        self.base_activation()
        for res in self.compute(misses()):
            finish(res)
        bar.close()
        return self.report(sources, results, indexed, t0)

    def indexed(self) -> set[tuple[str, str]]:
        """(adapter id, key) pairs already in the cache index (a rerun appends no duplicate lines)."""
        return {(r.get("adapter"), r.get("key")) for r in self.cache.read_index()}

    def lookup(self, src: DeltaSource) -> tuple[str | None, DeltaResult | None]:
        """``(key, None)`` when ``src`` still needs computing, else ``(key, result)`` for a cache hit or a broken
        source."""
        try:
            content = self._content_id(src)
        except BrokenSource as exc:
            return None, DeltaResult(src.id, src.kind, "broken", src.family, str(src.path), error=str(exc))
        key = self.key(content)
        hit = self.cache.get(key)
        if hit is not None:
            return key, DeltaResult(
                src.id, src.kind, "cached", src.family, str(src.path), key, self._rel(key), float(hit.tensor.norm())
            )
        return key, None

    def compute(self, todo: Iterable[tuple[DeltaSource, str]]) -> Iterator[DeltaResult]:
        """Compute and store the Δ of each (source, key) that missed the cache; yields one result per source.

        LoRAs are grouped by layout in arrival order and run K per forward (a group is flushed when it
        reaches K, the rest at the end); models are loaded and run one at a time. ``todo`` is consumed
        lazily, so at most K adapters' weights per layout are held at once.
        """
        pending: dict[tuple, list[tuple[DeltaSource, str, LoraWeights]]] = defaultdict(list)

        def flush(sig: tuple) -> list[DeltaResult]:
            group = pending.pop(sig, [])
            if not group:
                return []
            deltas = self.lora_deltas(LoraWeights.stack([w for _, _, w in group]))
            # no gc.collect() here: the group is freed by reference counting (tests/test_deltas_memory.py),
            # and a full collection in a process holding a model costs ~0.1-0.3 s, more than a GPU forward
            return [self._store(src, key, delta) for (src, key, _), delta in zip(group, deltas)]

        for src, key in todo:
            if src.kind == "model":
                try:
                    delta = self.model_delta(src.path)
                except BrokenSource as exc:
                    yield DeltaResult(src.id, src.kind, "broken", src.family, str(src.path), key, error=str(exc))
                    continue
                yield self._store(src, key, delta)
                continue
            try:
                weights = load_adapter(src.path, self.backbone.arch, dtype=torch.float32)
            except DeltaLoraError as exc:
                yield DeltaResult(src.id, src.kind, "broken", src.family, str(src.path), key, error=str(exc))
                continue
            sig = weights.layout.signature
            pending[sig].append((src, key, weights))
            del weights
            if len(pending[sig]) >= self.k:
                yield from flush(sig)
        for sig in list(pending):
            yield from flush(sig)

    def report(
        self, sources: Sequence[DeltaSource], results: dict[str, DeltaResult], indexed: set[tuple[str, str]], t0: float
    ) -> DeltaReport:
        """The report of a finished job (results in the order of ``sources``); appends the new index lines."""
        report = DeltaReport(
            backbone=self.backbone.name,
            weights_id=self.backbone.weights_id,
            probes=self.probes.name,
            probes_sha256=self.probes.sha256,
            representation=self.rep.spec,
            dtype=self.dtype,
            cache_dir=str(self.cache.root),
            base_key=self.base_key,
        )
        report.results = [results[s.id] for s in sources]
        new = [
            {
                "adapter": r.id,
                "key": r.key,
                "file": r.file,
                "kind": r.kind,
                "family": r.family,
                "path": r.path,
                "norm": r.norm,
                **self.identity(),
            }
            for r in report.ok
            if (r.id, r.key) not in indexed
        ]
        self.cache.append_index(new)
        report.stats = delta_stats(report.results)
        report.seconds = time.perf_counter() - t0
        _log_stats(report)
        return report

    def _rel(self, key: str) -> str:
        return str(self.cache.path(key).relative_to(self.cache.root))

    def _store(self, src: DeltaSource, key: str, delta: torch.Tensor) -> DeltaResult:
        delta = delta.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(delta).all()):
            return DeltaResult(
                src.id,
                src.kind,
                "broken",
                src.family,
                str(src.path),
                key,
                error=(
                    f"{src.path}: Δ has non-finite values (the adapter overflows the backbone); retrain or re-export it"
                ),
            )
        norm = float(delta.norm())
        self.cache.put(
            key, delta, self._meta(adapter=src.id, path=src.path, kind=src.kind, family=src.family, norm=norm)
        )
        return DeltaResult(src.id, src.kind, "computed", src.family, str(src.path), key, self._rel(key), norm)

    def _content_id(self, src: DeltaSource) -> str:
        if src.kind == "lora":
            try:
                return lora_content(src.path)
            except DeltaCacheError as exc:
                raise BrokenSource(str(exc)) from None
        if src.kind == "model":
            if not (src.path / "config.json").is_file():
                raise BrokenSource(
                    f"{src.path}: not a model directory (no config.json); pass a directory saved with save_pretrained"
                )
            return "model:" + weights_id_of_dir(src.path)
        raise DeltaError(f"unknown source kind {src.kind!r}; use 'lora' or 'model'")

    @torch.no_grad()
    def model_delta(self, model_dir: str | Path) -> torch.Tensor:
        """Mode B: Δ of a full fine-tuned checkpoint of the backbone's architecture (loaded, used, freed)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        model_dir = Path(model_dir)
        try:
            config = AutoConfig.from_pretrained(model_dir)
            arch = Architecture.from_config(config)
        except (OSError, ValueError, DeltaLoraError) as exc:
            raise BrokenSource(
                f"{model_dir}: cannot read config.json ({' '.join(str(exc).split())[:200]}); "
                "pass a directory saved with save_pretrained"
            ) from None
        want = self.backbone.arch
        vocab, want_vocab = getattr(config, "vocab_size", None), self.backbone.model.config.vocab_size
        if arch != want or vocab != want_vocab:
            raise BrokenSource(
                f"{model_dir}: architecture {arch} (vocab {vocab}) differs from backbone {self.backbone.name}'s {want} "
                f"(vocab {want_vocab}); Mode B needs a fine-tune of the same backbone"
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.backbone.runtime.torch_dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BrokenSource(
                f"{model_dir}: cannot load the model ({' '.join(str(exc).split())[:200]}); check the weight files"
            ) from None
        model.to(self.backbone.device).eval()
        bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            del model
            raise BrokenSource(
                f"{model_dir}: non-finite values (NaN/Inf) in {bad[0]}"
                + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
                + "; the checkpoint is broken"
            )
        try:
            return self.activation(model) - self.base_activation()
        finally:
            del model
            gc.collect()


def compute_deltas(
    backbone: Backbone,
    sources: Sequence[DeltaSource],
    probes: ProbeSet | TaskProbes | str = "generic5",
    representation: Representation | str = "last_token",
    cache: DeltaCache | str | Path | None = None,
    batch_adapters: int = 8,
    shard: tuple[int, int] | str | None = None,
    progress: bool = False,
) -> DeltaReport:
    """Δ of every source (or of shard i/n of them, by sorted id), through the cache; see :class:`DeltaExtractor`.

    With :class:`TaskProbes` every source is probed on its own tasks' prompts (``DeltaSource.tasks``): one extractor
    (and one v(B)) per task group, the results in source order in one report whose ``probes`` is the spec."""
    if isinstance(shard, str):
        shard = parse_shard(shard)
    chosen = select_shard(sources, shard)
    if not isinstance(probes, TaskProbes):
        extractor = DeltaExtractor(backbone, probes, representation, cache, batch_adapters)
        return extractor.run(chosen, progress=progress)
    untasked = [s for s in chosen if not s.tasks]
    if untasked:
        raise DeltaError(
            f"{untasked[0].path}: task probes need each adapter's task; compute them over a zoo (--zoo DIR), whose "
            "manifest names every teacher's task"
        )
    groups: dict[tuple[str, ...], list[DeltaSource]] = defaultdict(list)
    for s in chosen:
        groups[s.tasks].append(s)
    t0 = time.perf_counter()
    parts = [
        DeltaExtractor(backbone, probes.probe_set(g), representation, cache, batch_adapters).run(group, progress)
        for g, group in groups.items()
    ]
    first = parts[0] if parts else DeltaExtractor(backbone, "generic5", representation, cache, batch_adapters)
    by_id = {r.id: r for p in parts for r in p.results}
    shas = sorted(p.probes_sha256 for p in parts)
    report = DeltaReport(
        backbone=backbone.name,
        weights_id=backbone.weights_id,
        probes=probes.name,
        probes_sha256=hashlib.sha256("\n".join(shas).encode()).hexdigest(),
        representation=parse_representation(representation).spec,
        dtype=first.dtype,
        cache_dir=str(first.cache_dir if parts else first.cache.root),
        base_key="",  # one v(B) per task group
        results=[by_id[s.id] for s in chosen],
    )
    report.stats = delta_stats(report.results)
    report.seconds = time.perf_counter() - t0
    return report


# ------------------------------------------------------------------------------------------ stats


def robust_z(values: Sequence[float]) -> list[float]:
    """0.6745·(x − median)/MAD (Iglewicz–Hoaglin); 0 for every value when the MAD is 0."""
    if not values:
        return []
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    if mad == 0:
        return [0.0 for _ in values]
    return [0.6745 * (v - med) / mad for v in values]


def delta_stats(results: Sequence[DeltaResult]) -> dict:
    """Δ norms per family (``"all"`` when no family is known), robust-z outliers within a family, broken sources."""
    ok = [r for r in results if r.status != "broken" and r.norm is not None]
    groups: dict[str, list[DeltaResult]] = defaultdict(list)
    for r in ok:
        groups[r.family or "all"].append(r)
    families, outliers = {}, []
    for fam in sorted(groups):
        norms = [r.norm for r in groups[fam]]
        families[fam] = {
            "count": len(norms),
            "mean": statistics.fmean(norms),
            "std": statistics.pstdev(norms) if len(norms) > 1 else 0.0,
            "min": min(norms),
            "max": max(norms),
        }
        if len(norms) < OUTLIER_MIN_GROUP:
            continue
        for r, z in zip(groups[fam], robust_z(norms)):
            if abs(z) > OUTLIER_Z:
                outliers.append({"id": r.id, "family": fam, "norm": r.norm, "robust_z": z})
    return {
        "norms_by_family": families,
        "outliers": outliers,
        "broken": [{"id": r.id, "path": r.path, "error": r.error} for r in results if r.status == "broken"],
    }


def _log_stats(report: DeltaReport) -> None:
    c = report.counts()
    log.info(
        "Δ %s on %s: %d computed, %d cached, %d broken in %.1fs",
        report.representation,
        report.backbone,
        c["computed"],
        c["cached"],
        c["broken"],
        report.seconds,
    )
    for fam, s in report.stats["norms_by_family"].items():
        log.info(
            "  |Δ| %s: n=%d mean %.4g std %.4g [%.4g, %.4g]", fam, s["count"], s["mean"], s["std"], s["min"], s["max"]
        )
    for o in report.stats["outliers"]:
        log.warning("outlier Δ norm: %s (%s) |Δ|=%.4g robust z %.1f", o["id"], o["family"], o["norm"], o["robust_z"])


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Δ", unit="adapter", disable=not enabled)


__all__ = [
    "BrokenSource",
    "DeltaError",
    "DeltaExtractor",
    "DeltaReport",
    "DeltaResult",
    "DeltaSource",
    "compute_deltas",
    "delta_stats",
    "parse_shard",
    "robust_z",
    "select_shard",
    "sources_from_adapters",
    "sources_from_manifest",
    "sources_from_models",
]
