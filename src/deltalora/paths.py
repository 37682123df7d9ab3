"""Where deltalora keeps things, and how it writes them: atomically, and safetensors with one byte layout per
content."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save as st_save


def home() -> Path:
    """Root of deltalora's caches: ``$DELTALORA_HOME`` or ``~/.cache/deltalora``."""
    env = os.environ.get("DELTALORA_HOME")
    root = Path(env) if env else Path.home() / ".cache" / "deltalora"
    return root.expanduser()


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """``tensors`` serialised as safetensors whose header is sorted, compact JSON: equal content, equal bytes.

    safetensors writes its ``__metadata__`` map in hash-map order, which differs between runs; content-addressed
    caches (adapter hashes, checkpoints) need one byte layout per content. Tensor offsets are relative to the
    end of the header, so only the header is rewritten, padded with spaces to a multiple of 8 as safetensors does.
    The one place adapters and generator checkpoints are serialised.
    """
    raw = st_save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    text = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch directory beside ``final``; on success it is renamed onto ``final``.

    On any exception the scratch directory is removed and ``final`` is untouched, so a reader
    never sees a half-written result. An existing ``final`` is replaced only after the new one is
    complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a cache entry should read like any other directory
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its folder) for the duration: one process at a time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def locked_append(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` under an exclusive ``flock`` and fsync it.

    Used for the append-only JSONL indexes (zoo manifest, Δ cache index) that several shard workers
    may write at once; readers ignore a torn trailing line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
