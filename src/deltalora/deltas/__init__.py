"""Delta activations: probe sets, representations, the LoRA Δ forward (batched teacher extraction without
gradients, :class:`DeltaProbe` with them), the Δ spec that keys the content-addressed cache, and Δ-space analysis."""

from .analyze import remove_shared
from .cache import DELTA_CODE_VERSION, DeltaCache, DeltaCacheError, adapter_content_hash, cache_key, default_cache_dir
from .extract import (
    BrokenSource,
    DeltaError,
    DeltaExtractor,
    DeltaReport,
    DeltaResult,
    DeltaSource,
    compute_deltas,
    delta_stats,
    parse_shard,
    robust_z,
    select_shard,
    sources_from_adapters,
    sources_from_manifest,
    sources_from_models,
)
from .forward import PROBE_DTYPES, DeltaProbe, lora_activations
from .probes import ProbeError, ProbeSet, get_probe_set, load_probe_file, probe_set_names, register_probe_set
from .represent import (
    Representation,
    encode_probes,
    mean_over_probes,
    parse_representation,
    probe_vectors,
    repeat_batch,
)
from .spec import DeltaSpec, lora_content

__all__ = [
    "PROBE_DTYPES",
    "DeltaProbe",
    "DeltaSpec",
    "lora_activations",
    "lora_content",
    "remove_shared",
    "DELTA_CODE_VERSION",
    "BrokenSource",
    "DeltaCache",
    "DeltaCacheError",
    "DeltaError",
    "DeltaExtractor",
    "DeltaReport",
    "DeltaResult",
    "DeltaSource",
    "ProbeError",
    "ProbeSet",
    "Representation",
    "adapter_content_hash",
    "cache_key",
    "compute_deltas",
    "default_cache_dir",
    "delta_stats",
    "encode_probes",
    "get_probe_set",
    "load_probe_file",
    "mean_over_probes",
    "parse_representation",
    "parse_shard",
    "probe_set_names",
    "probe_vectors",
    "register_probe_set",
    "repeat_batch",
    "robust_z",
    "select_shard",
    "sources_from_adapters",
    "sources_from_manifest",
    "sources_from_models",
]
