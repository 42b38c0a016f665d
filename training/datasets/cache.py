"""Content-addressed cache of verified dataset files: `<cache_dir>/sha256/<hex[:2]>/<hex>`.

A dataset open downloads its new files into its own folder below `<cache_dir>/staging/` and
moves them into the cache only when the whole version has passed (`commit`); a refused or
interrupted open leaves no entry (`discard`).

A verified entry is trusted by a cheap check, not re-hashed on every open: when an entry is
verified, its mtime is set to a moment already past (`_stamp`), and a marker
`<cache_dir>/verified/<hex[:2]>/<hex>` records the entry's size, mtime_ns, ctime_ns, inode and
SHA-512 (and whether its float32s were scanned). Any write to the file afterwards gives it the
current time as mtime, which can never equal the stamp, so a changed file (damaged, tampered
with, replaced) misses its marker and is re-hashed; one that fails is removed and fetched again.
The marker's mtime is when the entry was last used (the service's purge keeps used entries).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_BYTES = 1 << 20  # a multiple of 8, so every chunk holds whole cf32 samples
STAMP_AGE_NS = 2_000_000_000  # a verified entry's mtime is set this far back: coarser than any file system's clock


@dataclass(frozen=True)
class Digest:
    sha256: str
    sha512: str
    size: int
    first_non_finite: int | None  # index of the first NaN/Inf float32, None when all finite


def scan(path: Path, *, samples: bool) -> Digest:
    """Hash a file (and look for NaN/Inf in its float32s) in chunks: memory stays flat."""
    sha256, sha512, size, bad = hashlib.sha256(), hashlib.sha512(), 0, None
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            sha256.update(chunk)
            sha512.update(chunk)
            if samples and bad is None:
                values = np.frombuffer(chunk, dtype="<f4", count=len(chunk) // 4)
                finite = np.isfinite(values)
                bad = None if finite.all() else size // 4 + int(np.argmin(finite))
            size += len(chunk)
    return Digest(sha256.hexdigest(), sha512.hexdigest(), size, bad)


class Cache:
    """Verified files by SHA-256; new ones wait in a staging folder until `commit`."""

    def __init__(self, cache_dir: Path):
        self.root = Path(cache_dir)
        (self.root / "staging").mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix="open-", dir=self.root / "staging"))
        self.pending: dict[str, tuple[Path, Digest]] = {}
        self._scanned: set[str] = set()  # pending files whose float32s were scanned for NaN/Inf

    def entry(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def marker(self, sha256: str) -> Path:
        return self.root / "verified" / sha256[:2] / sha256

    def cached(self, sha256: str, *, samples: bool) -> tuple[Path, Digest] | None:
        if sha256 in self.pending:
            return self.pending[sha256]
        path = self.entry(sha256)
        if not path.is_file():
            return None
        trusted = self._trusted(sha256, samples=samples)
        if trusted is not None:
            return path, trusted
        digest = scan(path, samples=samples)
        if digest.sha256 == sha256 and digest.first_non_finite is None:
            self._stamp(path, digest, samples=samples)
            return path, digest
        path.unlink(missing_ok=True)  # damaged on disk: the caller fetches it again
        self.marker(sha256).unlink(missing_ok=True)
        return None

    def _trusted(self, sha256: str, *, samples: bool) -> Digest | None:
        """The digest recorded when the entry was verified, if the file is untouched since; else None."""
        try:
            recorded = json.loads(self.marker(sha256).read_text())
            unchanged = recorded["stat"] == _identity(self.entry(sha256))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not unchanged or (samples and not recorded["finite_scanned"]):
            return None
        os.utime(self.marker(sha256))  # when the entry was last used: the service's purge keeps used files
        return Digest(sha256, recorded["sha512"], recorded["stat"][0], None)

    def _stamp(self, path: Path, digest: Digest, *, samples: bool) -> None:
        """Mark a just-verified entry: an mtime in the past, and the marker that `_trusted` checks."""
        past_ns = time.time_ns() - STAMP_AGE_NS
        os.utime(path, ns=(past_ns, past_ns))
        marker = self.marker(digest.sha256)
        marker.parent.mkdir(parents=True, exist_ok=True)
        partial = marker.with_name(f"{marker.name}.{os.getpid()}.part")
        partial.write_text(json.dumps({"stat": _identity(path), "sha512": digest.sha512,
                                       "finite_scanned": samples}))
        os.replace(partial, marker)  # atomic: a reader sees the whole marker or none

    def new_download(self) -> Path:
        fd, name = tempfile.mkstemp(suffix=".part", dir=self.staging)
        os.close(fd)
        return Path(name)

    def stage(self, path: Path, digest: Digest, *, samples: bool) -> tuple[Path, Digest]:
        self.pending[digest.sha256] = (path, digest)
        if samples:
            self._scanned.add(digest.sha256)
        return path, digest

    def commit(self) -> None:
        for sha256, (path, digest) in self.pending.items():
            self.entry(sha256).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, self.entry(sha256))  # atomic: readers see all of a file or none
            self._stamp(self.entry(sha256), digest, samples=sha256 in self._scanned)
        self.pending.clear()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _identity(path: Path) -> list[int]:
    """What any change to a file changes: size, mtime and ctime (ns), inode and device."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]
