"""Generator checkpoints: one safetensors file holding the state dict and, in its header, JSON metadata.

The metadata (header key ``deltalora_generator``) says everything needed to rebuild the generator and to
use it correctly::

    {"format": "deltalora-generator", "format_version": 1,
     "generator": {"name": "compact", "cond_dim": 384, "n_prompts": 8, "options": {...}},   # gen.spec
     "lora": {"rank": 16, "alpha": 32.0, "targets": [...], "layers": null, "rslora": false},
     "backbone": {"name": "qwen2.5-1.5b", "architecture": {...}},
     "encoder": "minilm", "condition_form": "prompts", "code_version": "0.1.0", "num_parameters": 19555552,
     "extra": {...}}

One file (not a file plus a sidecar) so the weights and what they mean can never drift apart; it is
written atomically. :func:`load_generator` validates every part where it enters and raises
:class:`GeneratorCheckpointError` — one line naming the file, the problem and the fix. Nothing is ever
unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load as st_load
from torch import nn

from .. import __version__
from ..backbones import Architecture
from ..conditions import FORMS
from ..config import LoraSpec, validation_message
from ..errors import ConfigError, DeltaLoraError
from ..lora import LoraLayout, derive_layout
from ..paths import atomic_write_bytes, safetensors_bytes
from .library import FROM_CHECKPOINT
from .registry import build_generator, generator_names, num_parameters

META_KEY = "deltalora_generator"
FORMAT = "deltalora-generator"
FORMAT_VERSION = 1
RESAVE = "re-save it with deltalora.generators.save_generator (or retrain it)"


class GeneratorCheckpointError(DeltaLoraError):
    """A generator checkpoint is missing, corrupt, or does not fit the code that loads it."""

    def __init__(self, path, problem: str, fix: str):
        self.path = str(path)
        self.problem = " ".join(problem.split())
        self.fix = " ".join(fix.split())
        super().__init__(f"{self.path}: {self.problem}; {self.fix}")


@dataclass
class LoadedGenerator:
    """A generator rebuilt from its checkpoint, and what the checkpoint says about it."""

    gen: nn.Module
    path: Path
    sha256: str  # of the checkpoint file's bytes
    spec: dict[str, Any]  # the generator's build spec (name, cond_dim, n_prompts, options)
    layout: LoraLayout
    backbone: str
    encoder: str
    condition_form: str  # how condition texts are made from items: "prompts" or "prompt_answer"
    code_version: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def n_prompts(self) -> int:
        return self.spec["n_prompts"]

    @property
    def cond_dim(self) -> int:
        return self.spec["cond_dim"]


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Inside the block every ``nn.Parameter`` a module registers is moved to the meta device at once.

    Builds a generator's *shape* without its memory: a layer's ``torch.empty`` storage is dropped
    before its init writes to it (the init then runs on meta, a no-op). Unlike ``torch.device("meta")``,
    buffers and plain tensors stay real, so builders that compute with tensors (e.g. hyperconv's
    tokenizer) still work. Not thread-safe (it patches ``nn.Module.register_parameter``).
    """
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------- save


def checkpoint_metadata(
    gen: nn.Module,
    layout: LoraLayout,
    backbone: str,
    encoder: str,
    condition_form: str = "prompts",
    extra: Mapping[str, Any] | None = None,
) -> dict:
    if condition_form not in tuple(FORMS):
        raise ValueError(f"condition_form {condition_form!r} is not one of {tuple(FORMS)}")
    if layout.arch is None:
        raise ValueError("a generator checkpoint needs the backbone architecture; derive the layout from the backbone")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generator": gen.spec,
        "lora": layout.spec.model_dump(mode="json"),
        "backbone": {"name": backbone, "architecture": asdict(layout.arch)},
        "encoder": encoder,
        "condition_form": condition_form,
        "code_version": __version__,
        "num_parameters": num_parameters(gen),
        "extra": dict(extra or {}),
    }


def save_generator(gen: nn.Module, path: str | Path, meta: Mapping[str, Any], layout: LoraLayout | None = None) -> Path:
    """Write ``gen`` to ``path`` (atomically) as safetensors + JSON metadata; returns ``path``.

    ``meta`` must name ``backbone`` (the registered name, directory or HF id the generator is for) and
    ``encoder`` (the condition encoder it was trained with), optionally ``condition_form`` (``"prompts"``,
    the default, or ``"prompt_answer"``: what the encoder was fed in training); any other keys (JSON-able)
    are kept under ``extra``. The LoRA spec and backbone architecture come from ``layout`` (default:
    ``gen.layout``).
    """
    spec = getattr(gen, "spec", None)
    if not isinstance(spec, dict) or not {"name", "cond_dim", "n_prompts", "options"} <= set(spec):
        raise ValueError("save_generator needs a generator built by build_generator (it carries .spec)")
    layout = layout if layout is not None else getattr(gen, "layout", None)
    if layout is None:
        raise ValueError(
            "save_generator needs the generator's LoRA layout: pass layout= (the generator has no .layout)"
        )
    meta = dict(meta)
    for key in ("backbone", "encoder"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise ValueError(f"save_generator: meta[{key!r}] must be a non-empty string")
    backbone, encoder = meta.pop("backbone"), meta.pop("encoder")
    form = meta.pop("condition_form", "prompts")
    header = checkpoint_metadata(gen, layout, backbone, encoder, form, meta)
    text = json.dumps(header, sort_keys=True)  # raises for values that are not JSON-able
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in gen.state_dict().items()}
    data = safetensors_bytes(state, {"format": "pt", META_KEY: text})
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


# --------------------------------------------------------------------------------------------- load


def _read_header(path: Path, data: bytes) -> dict[str, Any]:
    bad = GeneratorCheckpointError(
        path, "not a readable safetensors file (truncated or corrupt)", f"copy it again or {RESAVE}"
    )
    if len(data) < 8:
        raise bad
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise bad
    try:
        header = json.loads(data[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(header, dict):
        raise bad
    return header.get("__metadata__") or {}


def _field(path: Path, meta: dict, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise GeneratorCheckpointError(
            path,
            f"metadata field {key!r} is {value!r}, expected {what}",
            f"the metadata was edited or damaged; {RESAVE}",
        )
    return value


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The validated JSON metadata of a checkpoint, without building the generator."""
    path = Path(path)
    return _parse_metadata(path, _read_bytes(path))


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise GeneratorCheckpointError(
            path, "generator checkpoint not found", "pass the .safetensors file written by save_generator"
        )
    if path.is_dir():
        raise GeneratorCheckpointError(
            path, "is a directory, not a generator checkpoint", "pass the .safetensors file written by save_generator"
        )
    return path.read_bytes()


def _parse_metadata(path: Path, data: bytes) -> dict[str, Any]:
    raw = _read_header(path, data)
    if META_KEY not in raw:
        raise GeneratorCheckpointError(
            path,
            (
                f"no {META_KEY!r} metadata: "
                "this safetensors file is not a deltalora generator checkpoint (a PEFT adapter?)"
            ),
            "pass a checkpoint written by deltalora.generators.save_generator",
        )
    try:
        meta = json.loads(raw[META_KEY])
    except (json.JSONDecodeError, TypeError):
        meta = None
    if not isinstance(meta, dict):
        raise GeneratorCheckpointError(
            path, f"{META_KEY!r} metadata is not a JSON object", f"the header is damaged; {RESAVE}"
        )
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise GeneratorCheckpointError(
            path,
            (
                f"checkpoint format {meta.get('format')!r} version {meta.get('format_version')!r} "
                f"is not {FORMAT!r} version {FORMAT_VERSION}"
            ),
            (
                f"it was written by another deltalora version ({meta.get('code_version')!r}, this is {__version__}); "
                "load it with that version"
            ),
        )
    gspec = _field(path, meta, "generator", dict, "an object")
    name = _field(path, gspec, "name", str, "a generator name")
    for key in ("cond_dim", "n_prompts"):
        v = gspec.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise GeneratorCheckpointError(
                path, f"generator {key} is {v!r}, expected a positive integer", f"the metadata was damaged; {RESAVE}"
            )
    _field(path, gspec, "options", dict, "an object")
    backbone = _field(path, meta, "backbone", dict, "an object with name and architecture")
    _field(path, backbone, "name", str, "a backbone name")
    _field(path, meta, "encoder", str, "an encoder name")
    forms = tuple(FORMS)
    if meta.get("condition_form") not in forms:
        raise GeneratorCheckpointError(
            path, f"condition_form is {meta.get('condition_form')!r}, expected one of {', '.join(forms)}", RESAVE
        )
    _field(path, meta, "extra", dict, "an object")
    try:
        lora = LoraSpec.model_validate(meta.get("lora"))
    except ValidationError as exc:
        raise GeneratorCheckpointError(
            path, f"invalid LoRA spec in the metadata ({validation_message(exc)})", RESAVE
        ) from None
    fields = _field(path, backbone, "architecture", dict, "an object")
    try:
        arch = Architecture.from_config(fields)
        wrong = {
            k: v
            for k, v in fields.items()
            if k != "model_type" and (isinstance(v, bool) or not isinstance(v, int) or v < 1)
        }
        if wrong or asdict(arch) != fields:
            raise ConfigError(
                f"fields {sorted(wrong) or sorted(set(fields) ^ set(asdict(arch)))} "
                "are missing or not positive integers"
            )
        layout = derive_layout(arch, lora)
    except (TypeError, ValueError, ConfigError) as exc:
        raise GeneratorCheckpointError(path, f"invalid backbone architecture in the metadata ({exc})", RESAVE) from None
    known = generator_names()
    if name not in known:
        raise GeneratorCheckpointError(
            path,
            (
                f"generator {name!r} is not registered in this deltalora "
                f"({__version__}; known: {', '.join(known) or '(none)'})"
            ),
            (
                f"use the deltalora version that wrote it ({meta.get('code_version')!r}) "
                f"or import the module that registers {name!r}"
            ),
        )
    meta["_layout"] = layout
    return meta


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """Rebuild the generator saved at ``path`` and load its weights, validating everything on the way."""
    path = Path(path)
    data = _read_bytes(path)
    meta = _parse_metadata(path, data)
    layout: LoraLayout = meta.pop("_layout")
    gspec = meta["generator"]
    try:
        state = st_load(data)
    except Exception as exc:  # safetensors raises SafetensorError and others for damaged files
        raise GeneratorCheckpointError(
            path, f"not a readable safetensors file ({' '.join(str(exc).split())})", f"copy it again or {RESAVE}"
        ) from None

    def build() -> nn.Module:
        try:
            return build_generator(
                gspec["name"],
                layout,
                gspec["cond_dim"],
                gspec["n_prompts"],
                library=FROM_CHECKPOINT,
                **gspec["options"],
            )
        except ConfigError as exc:
            raise GeneratorCheckpointError(
                path, f"cannot rebuild generator {gspec['name']!r} from its metadata ({exc})", RESAVE
            ) from None

    with meta_parameters():  # shapes only: the weights come from the file
        gen = build()
    want = gen.state_dict()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:2])}{' …' if len(missing) > 2 else ''})")
        if extra:
            parts.append(f"{len(extra)} unexpected ({', '.join(extra[:2])}{' …' if len(extra) > 2 else ''})")
        raise GeneratorCheckpointError(
            path,
            f"state dict keys do not match generator {gspec['name']!r}: {'; '.join(parts)}",
            f"the file does not fit its metadata; {RESAVE}",
        )
    shapes = [
        f"{k} {list(state[k].shape)} (needs {list(want[k].shape)})"
        for k in sorted(want)
        if state[k].shape != want[k].shape
    ]
    if shapes:
        raise GeneratorCheckpointError(
            path, f"tensor shape mismatch: {', '.join(shapes[:2])}", f"the file does not fit its metadata; {RESAVE}"
        )
    bad = [
        k
        for k in sorted(want)
        if want[k].is_floating_point() and (not state[k].is_floating_point() or not torch.isfinite(state[k]).all())
    ]
    if bad:
        raise GeneratorCheckpointError(
            path,
            f"non-finite or non-float values in {', '.join(bad[:2])}",
            "the generator is broken (diverged training?): use an earlier checkpoint",
        )
    gen.load_state_dict(state, strict=True, assign=True)
    still_meta = [n for n, t in (*gen.named_parameters(), *gen.named_buffers()) if t.is_meta]
    if still_meta:  # pragma: no cover - a builder that creates parameters outside register_parameter
        raise GeneratorCheckpointError(
            path, f"generator {gspec['name']!r} left {still_meta[0]} unloaded", "report this as a deltalora bug"
        )
    gen = gen.to(device).eval()
    backbone = meta["backbone"]
    return LoadedGenerator(
        gen=gen,
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        spec=gspec,
        layout=layout,
        backbone=backbone["name"],
        encoder=meta["encoder"],
        condition_form=meta["condition_form"],
        code_version=str(meta.get("code_version")),
        extra=meta["extra"],
    )


__all__ = [
    "GeneratorCheckpointError",
    "LoadedGenerator",
    "load_generator",
    "meta_parameters",
    "read_checkpoint_metadata",
    "save_generator",
]
