"""A canonical zoo's one LoRA initialisation: drawn once, stored in the zoo, read by whatever needs the teachers' A.

Teachers trained from independent random A barely move A in a few dozen steps, so each teacher's ΔW = s·B·A lives
in the row space of its own random A and two seeds of one task are nearly unrelated (ΔW cosine 0.01-0.02; 0.47 from
one shared init). A canonical zoo starts every teacher — every task, seed and mixed teacher — from one A:

- ``<zoo>/init/`` is a PEFT adapter directory (B = 0, so ΔW = 0) written once, atomically;
- ``zoo_config.json`` records it under ``"init": {"path": "init", "sha256": <adapter_model.safetensors sha256>}``;
  every later build, shard and reader checks the file against that record;
- a zoo built with ``--reuse`` of a canonical zoo of the same LoRA layout takes that zoo's init (so adding tasks
  later keeps the coordinate system); otherwise the init is drawn with PEFT's init from ``teacher.init_seed``.

Generators, merges and analyses read the init with :func:`read_init`, never by re-drawing it from a seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..backbones import Architecture
from ..lora import LoraWeights, derive_layout, load_adapter, save_adapter
from ..lora.adapter_io import WEIGHTS_NAME
from ..paths import atomic_write_bytes, file_lock
from .manifest import CONFIG_NAME, ZooError, file_sha256
from .train import TeacherTrainConfig, peft_init

INIT_DIR = "init"


def init_record(zoo: str | Path) -> dict | None:
    """The ``init`` record of a zoo's ``zoo_config.json`` (None: not a canonical zoo, or no config yet)."""
    path = Path(zoo) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8")).get("init")
    except (json.JSONDecodeError, AttributeError):
        raise ZooError(f"{path}: not a JSON object; restore it or rebuild the zoo") from None
    return rec if isinstance(rec, dict) else None


def zoo_init_kind(zoo: str | Path) -> str:
    """How a zoo's teachers were initialised: ``canonical``, ``per_seed`` or ``per_job`` (zoos built before the
    option, read from their saved config: ``shared_init: true`` was per_seed, its absence per_job)."""
    path = Path(zoo) / CONFIG_NAME
    try:
        teacher = ((json.loads(path.read_text(encoding="utf-8")).get("config") or {}).get("teacher")) or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        raise ZooError(f"{path}: missing or not valid JSON; pass a zoo built by `deltalora zoo build`") from None
    return init_kind(teacher)


def init_kind(teacher: dict) -> str:
    """The ``init`` of a saved teacher config; one saved before the option says it by ``shared_init``."""
    if "init" in teacher:
        return str(teacher["init"])
    return "per_seed" if teacher.get("shared_init") else "per_job"


def read_init(zoo: str | Path, arch: Architecture | None = None) -> LoraWeights | None:
    """The canonical init of ``zoo`` (float32, one adapter; A = the teachers' common A, B = 0), checked against its
    record; None for a zoo that is not canonical."""
    zoo = Path(zoo)
    rec = init_record(zoo)
    if rec is None:
        return None
    d = zoo / str(rec.get("path", INIT_DIR))
    if not (d / WEIGHTS_NAME).is_file():
        raise ZooError(
            f"{d}: the canonical init recorded in {zoo / CONFIG_NAME} is missing; restore it from a copy of the zoo"
        )
    if file_sha256(d / WEIGHTS_NAME) != rec.get("sha256"):
        raise ZooError(
            f"{d / WEIGHTS_NAME}: sha256 differs from the one in {zoo / CONFIG_NAME}; the init was changed — "
            "restore it (every teacher of the zoo started from it)"
        )
    return load_adapter(d, arch, dtype=torch.float32)


def _lock(zoo: Path):
    return file_lock(zoo / ".init.lock")


def ensure_init(zoo: Path, teacher: TeacherTrainConfig, arch: Architecture, reuse: list[Path] = ()) -> LoraWeights:
    """The zoo's canonical init, created on first use (see the module docstring) and recorded in ``zoo_config.json``."""
    layout = derive_layout(arch, teacher.lora)
    existing = read_init(zoo, arch)
    if existing is not None:
        if existing.layout.signature != layout.signature:
            raise ZooError(
                f"{zoo / INIT_DIR}: the canonical init's LoRA layout differs from teacher.lora; use a new --out"
            )
        return existing
    with _lock(zoo):  # shards of one build may start together: one draws and records, the others read
        existing = read_init(zoo, arch)
        return existing if existing is not None else _create(zoo, layout, teacher, arch, reuse)


def _create(zoo: Path, layout, teacher: TeacherTrainConfig, arch: Architecture, reuse) -> LoraWeights:
    init = None
    for src in reuse:
        if (Path(src) / CONFIG_NAME).is_file() and init_record(src) is not None:
            cand = read_init(src, arch)
            if cand is not None and cand.layout.signature == layout.signature:
                init = cand
                break
    if init is None:
        init = peft_init(layout, torch.Generator().manual_seed(teacher.init_seed))
    save_adapter(init, zoo / INIT_DIR, metadata={"deltalora": "canonical zoo init"})
    config_path = zoo / CONFIG_NAME
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    saved["init"] = {"path": INIT_DIR, "sha256": file_sha256(zoo / INIT_DIR / WEIGHTS_NAME)}
    atomic_write_bytes(config_path, (json.dumps(saved, indent=2, sort_keys=True) + "\n").encode())
    return read_init(zoo, arch)


__all__ = ["INIT_DIR", "ensure_init", "init_kind", "init_record", "read_init", "zoo_init_kind"]
