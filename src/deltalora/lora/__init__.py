"""LoRA layout, adapter IO, injection of plain-tensor adapters into a frozen backbone."""

from .adapter_io import inspect_adapter, load_adapter, save_adapter
from .hashing import weights_hash
from .injection import InjectionError, inject
from .layout import LoraLayout, Slot, derive_layout
from .merge import MERGE_METHODS, MergeError, merge_adapters
from .weights import LoraWeights, peft_a_init

__all__ = [
    "InjectionError",
    "MERGE_METHODS",
    "MergeError",
    "LoraLayout",
    "LoraWeights",
    "Slot",
    "derive_layout",
    "inject",
    "inspect_adapter",
    "load_adapter",
    "merge_adapters",
    "peft_a_init",
    "save_adapter",
    "weights_hash",
]
