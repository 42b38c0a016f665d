"""Content-addressed cache of verified dataset files: `<cache_dir>/sha256/<hex[:2]>/<hex>`.

A dataset open downloads its new files into its own folder below `<cache_dir>/staging/` and
moves them into the cache only when the whole version has passed (`commit`); a refused or
interrupted open leaves no entry (`discard`). Entries are re-hashed, and data files
re-scanned for NaN/Inf, on every hit: one local read per open buys detection of a file
damaged on disk, which is then fetched again; the download it saves is the expensive part.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_BYTES = 1 << 20  # a multiple of 8, so every chunk holds whole cf32 samples


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

    def entry(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def cached(self, sha256: str, *, samples: bool) -> tuple[Path, Digest] | None:
        if sha256 in self.pending:
            return self.pending[sha256]
        path = self.entry(sha256)
        if not path.is_file():
            return None
        digest = scan(path, samples=samples)
        if digest.sha256 == sha256 and digest.first_non_finite is None:
            os.utime(path)  # its mtime is when it was last used: the service's purge keeps used files
            return path, digest
        path.unlink(missing_ok=True)  # damaged on disk: the caller fetches it again
        return None

    def new_download(self) -> Path:
        fd, name = tempfile.mkstemp(suffix=".part", dir=self.staging)
        os.close(fd)
        return Path(name)

    def stage(self, path: Path, digest: Digest) -> tuple[Path, Digest]:
        self.pending[digest.sha256] = (path, digest)
        return path, digest

    def commit(self) -> None:
        for sha256, (path, _) in self.pending.items():
            self.entry(sha256).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, self.entry(sha256))  # atomic: readers see all of a file or none
        self.pending.clear()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
