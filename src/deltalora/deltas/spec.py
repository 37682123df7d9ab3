"""Which Δ: backbone weights, probe set, representation and dtype — the Δ cache key minus the adapter.

The extractor (which writes Δ) and the teacher dataset (which reads them) build their cache keys through
this one class, so a Δ computed by ``deltalora deltas compute`` is the Δ training finds.

    spec = DeltaSpec.for_backbone(backbone, probes="generic5", representation="last_token")
    spec.key(adapter_dir)      # the cache key of a PEFT adapter directory (content-addressed)
    spec.key_for("base")       # v(B)'s key; "model:<weights id>" for a fine-tuned checkpoint
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..backbones.precision import dtype_name
from .cache import adapter_content_hash, cache_key
from .probes import ProbeSet, TaskProbes, get_probe_set
from .represent import Representation, parse_representation


def lora_content(adapter: str | Path) -> str:
    """The content part of a LoRA adapter's Δ key (raises :class:`DeltaCacheError` for an unreadable adapter)."""
    return "lora:" + adapter_content_hash(adapter)


@dataclass(frozen=True)
class DeltaSpec:
    backbone: str  # the name given to `deltalora deltas compute --backbone`
    weights_id: str
    probes: str  # the name (or file) given to --probes
    probes_sha256: str
    representation: str
    dtype: str = "float32"

    @classmethod
    def for_backbone(
        cls,
        backbone,
        probes: ProbeSet | TaskProbes | str = "generic5",
        representation: Representation | str = "last_token",
    ) -> DeltaSpec:
        """The spec of Δ over ``backbone`` (a loaded :class:`Backbone`) in its runtime dtype. For
        :class:`TaskProbes` it names the spec only (``probes_sha256`` empty): each teacher's key comes from
        :meth:`with_probes` of its own probe set."""
        rep = representation if isinstance(representation, Representation) else parse_representation(representation)
        if isinstance(probes, TaskProbes):
            name, sha = probes.name, ""
        else:
            ps = probes if isinstance(probes, ProbeSet) else get_probe_set(probes)
            name, sha = ps.name, ps.sha256
        return cls(
            backbone=backbone.name,
            weights_id=backbone.weights_id,
            probes=name,
            probes_sha256=sha,
            representation=rep.spec,
            dtype=dtype_name(backbone.runtime.torch_dtype),
        )

    def with_probes(self, probes: ProbeSet) -> DeltaSpec:
        """The same backbone, representation and dtype over another probe set (a teacher's own task probes)."""
        return replace(self, probes=probes.name, probes_sha256=probes.sha256)

    def key_for(self, content: str) -> str:
        """The cache key of the Δ of ``content`` (``"base"``, ``"lora:<hash>"`` or ``"model:<weights id>"``)."""
        if not self.probes_sha256:
            raise ValueError(f"Δ spec over {self.probes} has no probe set of its own; key each teacher's with_probes()")
        return cache_key(
            backbone=self.weights_id,
            probes=self.probes_sha256,
            representation=self.representation,
            content=content,
            dtype=self.dtype,
        )

    def key(self, adapter: str | Path) -> str:
        """The Δ cache key of the adapter directory ``adapter``."""
        return self.key_for(lora_content(adapter))

    def identity(self) -> dict[str, str]:
        """What produced a Δ (stored beside it in the file's metadata and in the cache index)."""
        return {
            "backbone": self.backbone,
            "backbone_weights_id": self.weights_id,
            "probes": self.probes,
            "probes_sha256": self.probes_sha256,
            "repr": self.representation,
            "dtype": self.dtype,
        }

    def command(self, zoo: str | Path, cache: Path) -> str:
        """The command that fills the cache with this spec's Δ for a zoo."""
        return (
            f"deltalora deltas compute --backbone {self.backbone} --zoo {zoo} --probes {self.probes} "
            f"--repr '{self.representation}' --dtype {self.dtype} --cache {cache}"
        )


__all__ = ["DeltaSpec", "lora_content"]
