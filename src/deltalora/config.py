"""Typed, validated configuration shared by every stage.

Configs are pydantic models with ``extra="forbid"``: a misspelt key is an error, not a silently
ignored default. YAML files are validated where they enter (:func:`load_yaml`), and the error names
the file, the field and what was wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

# Short names users type, mapped to the projection module names of Llama-family decoders.
MODULE_ALIASES: dict[str, str] = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}
# Canonical order of modules inside one decoder layer (attention first, then MLP), as DnD orders them.
MODULE_ORDER: tuple[str, ...] = tuple(MODULE_ALIASES.values())

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeConfig(StrictModel):
    """Where and in what precision a model runs. Never assumed: always configured."""

    device: str = "auto"
    dtype: str = "float32"

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPES:
            raise ValueError(f"dtype {v!r} is not one of {sorted(DTYPES)}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto":
            try:
                torch.device(v)
            except RuntimeError as exc:  # pragma: no cover - message depends on torch
                raise ValueError(f"device {v!r} is not a torch device ({exc})") from None
        return v

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class LoraSpec(StrictModel):
    """Rank, scaling and placement of a LoRA, independent of any backbone."""

    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    layers: tuple[int, ...] | None = None  # None = every decoder layer
    rslora: bool = False

    @field_validator("targets", mode="before")
    @classmethod
    def _targets(cls, v):
        if isinstance(v, str):
            v = [t for t in v.replace(" ", "").split(",") if t]
        names = []
        for t in v:
            name = MODULE_ALIASES.get(t, t)
            if name not in MODULE_ORDER:
                raise ValueError(
                    f"unknown target module {t!r}; use some of {','.join(MODULE_ALIASES)} (or {','.join(MODULE_ORDER)})"
                )
            names.append(name)
        if not names:
            raise ValueError("targets is empty; name at least one module, e.g. q,v")
        if len(set(names)) != len(names):
            raise ValueError(f"targets has duplicates: {v}")
        return tuple(sorted(names, key=MODULE_ORDER.index))

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, v):
        if v is None:
            return None
        if isinstance(v, str):
            v = [int(x) for x in v.split(",") if x.strip()]
        v = sorted(set(int(x) for x in v))
        if not v or v[0] < 0:
            raise ValueError("layers must be a non-empty list of non-negative layer indices")
        return tuple(v)

    @property
    def scale(self) -> float:
        """The factor PEFT multiplies ``B A x`` by: alpha/r, or alpha/sqrt(r) with rsLoRA."""
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)


M = TypeVar("M", bound=BaseModel)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid on top, mappings merged key by key (so ``{"train": {"lr": 1}}`` keeps train's other
    keys).
    """
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(pairs: list[str]) -> dict:
    """``["train.delta_loss=specific_cosine", "seeds=[0]"]`` → a nested dict; values are parsed as YAML."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {pair!r}: write KEY=VALUE with a dotted key, e.g. --set train.delta_loss=cosine")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML; quote it") from None
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {p} is set to a value elsewhere and cannot also hold keys")
        node[parts[-1]] = parsed
    return out


def load_yaml(path: str | Path, model: type[M], overrides: dict | None = None) -> M:
    """Read ``path`` as YAML and validate it strictly as ``model``; errors name the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass the path of an existing YAML file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        one_line = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML ({one_line}); fix the syntax") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys to values, got {type(raw).__name__}")
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid config: {validation_message(exc)}") from None


def model_validate_or_raise(model: type[M], data: dict, where: str) -> M:
    """Validate ``data`` as ``model``; raise :class:`ConfigError` naming ``where`` on failure."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {validation_message(exc)}") from None


__all__ = [
    "DTYPES",
    "MODULE_ALIASES",
    "MODULE_ORDER",
    "LoraSpec",
    "RuntimeConfig",
    "StrictModel",
    "load_yaml",
    "parse_overrides",
    "model_validate_or_raise",
]
