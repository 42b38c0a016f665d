"""Reading side of `heimdall.dataset/1` (shared/contracts/dataset.md): verify, then serve.

`DatasetReader(uri, ...).open(...)` fetches every file of a dataset version through a
content-addressed cache, checks every rule of the contract and only then returns a
`VerifiedDataset`: a compact session index in RAM plus reads of the cached `.sigmf-data`
files (`training.datasets.verified`). Nothing trains on a version before all
of it has passed.

The cache (`training.datasets.cache`) only takes in the files of a version that passed in
full; the per-file rules live in `training.datasets.checks`. Error rules: `Rule`.
"""

from __future__ import annotations

import errno

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import ValidationError

from training.datasets.cache import Cache, Digest, scan
from training.datasets.checks import (
    Rule, ShardIndex, Where, check_collection, check_global, check_manifest, check_recording, check_shard_files,
    merge_shard, parse_meta, refuse_invalid_manifest,
)
from training.datasets.manifest import (
    COLLECTION_FILE, DATASET_ID_PATTERN, MANIFEST_FILE, SCHEMA, SPLITS, Manifest, Shard, data_name, meta_name,
)
from training.datasets.splits import BLOCK_FRACTION, BUFFER_FRACTION, SpatialFrame, check_shares
from training.datasets.verified import VerifiedDataset
from foundation.object_store import ObjectStore, S3Credentials, is_within, join_uri, normalise_uri, open_store

__all__ = ["DatasetReader", "Rule", "VerifiedDataset"]

SAMPLE_BYTES = 8  # cf32_le: two little-endian float32
FETCH_THREADS = 8  # a version's files come in parallel: a download waits on the network, not on the CPU


@dataclass(frozen=True)
class ShardSource:
    label: str  # the shard's `path` in the manifest: how errors name its files
    store: ObjectStore
    prefix: str  # key of the shard folder in `store`

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def file(self, name: str) -> str:
        return f"{self.label.rstrip('/')}/{name}"


class DatasetReader:
    """Opens one dataset version, `<root>/<dataset_id>/v<version>` (s3://, file:// or a path).

    Shards may live anywhere below `<root>` (a parent version's, reused by absolute URI) or
    below one of `allowed_locations`; nowhere else.
    """

    def __init__(self, uri: str, *, cache_dir: Path, credentials: S3Credentials | None = None,
                 allowed_locations: Sequence[str] = ()):
        self.uri = normalise_uri(uri)
        self.cache_dir = Path(cache_dir)
        self.credentials = credentials
        self.allowed_locations = [normalise_uri(location) for location in allowed_locations]
        self._stores: dict[str, ObjectStore] = {}

    def open(self, *, validation_split: float, test_split: float, min_labelled_sessions: int,
             spatial_block_fraction: float = BLOCK_FRACTION,
             spatial_buffer_fraction: float = BUFFER_FRACTION) -> VerifiedDataset:
        """Fetch and verify the whole version, then index and split its sessions (`training.datasets.splits`,
        the fractions as in `TrainConfig`).

        Raises DatasetError (a rule of the contract is broken: fix the dataset),
        StorageUnavailable (the object store is unreachable: retry) and ValueError (split
        shares that leave nothing to train on, before anything is fetched).
        """
        check_shares(validation_split, test_split)
        root, dataset_id = self._layout()
        locations = [root, *self.allowed_locations]
        manifest = self._read_manifest(dataset_id, locations)
        frame = SpatialFrame.for_lineage(dataset_id, [[r.latitude, r.longitude] for r in manifest.receivers],
                                         block_fraction=spatial_block_fraction,
                                         buffer_fraction=spatial_buffer_fraction)
        # Everything the manifest alone can refuse is refused before the first download.
        plans = [(shard, self._locate_shard(dataset_id, shard, locations),
                  check_shard_files(dataset_id, shard, manifest)) for shard in manifest.shards]
        cache = Cache(self.cache_dir)
        try:
            fetched = self._fetch_all(dataset_id, plans, cache)
            shards = [self._verify_shard(manifest, shard, source, receivers, files, cache)
                      for (shard, source, receivers), files in zip(plans, fetched)]
            dataset = _index(manifest, self.uri, shards, frame, validation_split, test_split)
            check_sessions(dataset, min_labelled_sessions, validation_split, test_split)
            cache.commit()
        finally:
            cache.discard()
        return dataset

    def _layout(self) -> tuple[str, str]:
        """(dataset root, dataset id) of `<root>/<dataset_id>/v<version>`."""
        parent, _, folder = self.uri.rpartition("/")
        root, _, dataset_id = parent.rpartition("/")
        if not (re.fullmatch(r"v[1-9][0-9]*", folder) and re.fullmatch(DATASET_ID_PATTERN, dataset_id)
                and root.partition("://")[2].strip("/")):
            Where(dataset_id or self.uri, MANIFEST_FILE).refuse(
                Rule.VERSION_FOLDER, f"{self.uri} is not <root>/<dataset_id>/v<version>")
        return root, dataset_id

    def _locate(self, uri: str, locations: list[str]) -> tuple[ObjectStore, str] | None:
        """The store of the allowed location holding `uri`, and the key of `uri` in it."""
        uri = normalise_uri(uri)
        for location in locations:
            if is_within(uri, location):
                if location not in self._stores:
                    self._stores[location] = open_store(location, self.credentials)
                return self._stores[location], uri[len(location):].strip("/")
        return None

    def _read_manifest(self, dataset_id: str, locations: list[str]) -> Manifest:
        where = Where(dataset_id, MANIFEST_FILE)
        store, key = self._locate(join_uri(self.uri, MANIFEST_FILE), locations)
        try:
            document = json.loads(store.read_bytes(key))
        except FileNotFoundError:
            where.refuse(Rule.MISSING_FILE, f"no {MANIFEST_FILE} at {self.uri}")
        except ValueError as exc:
            where.refuse(Rule.MANIFEST, f"not JSON: {exc}")
        if not isinstance(document, dict):
            where.refuse(Rule.MANIFEST, "not a JSON object")
        if document.get("schema") != SCHEMA:
            where.refuse(Rule.SCHEMA, f"schema {document.get('schema')!r}, this reader knows {SCHEMA!r}")
        try:
            manifest = Manifest.model_validate(document)
        except ValidationError as exc:
            refuse_invalid_manifest(where, exc)
        check_manifest(where, manifest, dataset_id, self.uri.rpartition("/")[2])
        return manifest

    def _locate_shard(self, dataset_id: str, shard: Shard, locations: list[str]) -> ShardSource:
        where = Where(dataset_id, shard.path)
        scheme = shard.path.partition("://")[0] if "://" in shard.path else None
        if scheme not in (None, "s3", "file") or ".." in shard.path.split("/"):
            where.refuse(Rule.SHARD_LOCATION, "shard paths are relative, s3:// or file://, without '..'")
        absolute = scheme is not None or shard.path.startswith("/")
        located = self._locate(shard.path if absolute else join_uri(self.uri, shard.path), locations)
        if located is None:
            where.refuse(Rule.SHARD_LOCATION, f"outside the allowed object-store locations {locations}")
        return ShardSource(shard.path, *located)

    def _fetch_all(self, dataset_id: str, plans: list, cache: Cache) -> list[dict[str, tuple[Path, Digest]]]:
        """Every listed file of every shard (`plans`), from the cache or downloaded, in parallel; per
        shard, {file name: (local path, digest)}. When several files are refused, the error names
        the first in manifest order, and is raised once no download is still running (so that
        `cache.discard` leaves nothing behind)."""
        wanted = [(source, name, sha256.lower()) for shard, source, _ in plans for name, sha256 in shard.files.items()]
        with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch") as pool:
            try:
                found = iter(list(pool.map(lambda file: self._fetch(dataset_id, *file, cache), wanted)))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return [{name: next(found) for name in shard.files} for shard, _, _ in plans]

    def _verify_shard(self, manifest: Manifest, shard: Shard, source: ShardSource, receivers: list[str],
                      fetched: dict[str, tuple[Path, Digest]], cache: Cache) -> ShardIndex:
        dataset_id = manifest.dataset_id
        check_collection(Where(dataset_id, source.file(COLLECTION_FILE)), fetched[COLLECTION_FILE][0].read_bytes(),
                         {rid: fetched[meta_name(rid)][1].sha512 for rid in receivers})
        recordings = []
        for rid in receivers:
            where = Where(dataset_id, source.file(meta_name(rid)))
            meta = parse_meta(where, fetched[meta_name(rid)][0].read_bytes())
            data = fetched[data_name(rid)][1]
            check_global(where, meta, rid, manifest, data.sha512)
            recordings.append(check_recording(where, meta, rid, shard.sessions, manifest))
            if data.size != shard.sessions * manifest.samples_per_capture * SAMPLE_BYTES:
                Where(dataset_id, source.file(data_name(rid))).refuse(Rule.CAPTURE_LENGTH, (
                    f"{data.size} bytes, {shard.sessions} sessions of {manifest.samples_per_capture} cf32 samples "
                    f"make {shard.sessions * manifest.samples_per_capture * SAMPLE_BYTES}"))
        axis = {r.id: column for column, r in enumerate(manifest.receivers)}
        data_files = [""] * len(axis)
        for rid in receivers:
            data_files[axis[rid]] = str(cache.entry(fetched[data_name(rid)][1].sha256))
        return merge_shard(dataset_id, recordings, axis, data_files)

    def _fetch(self, dataset_id: str, source: ShardSource, name: str, sha256: str,
               cache: Cache) -> tuple[Path, Digest]:
        """A verified local copy of one listed file: from the cache, or downloaded and staged."""
        where = Where(dataset_id, source.file(name))
        samples = name.endswith(".sigmf-data")
        hit = cache.cached(sha256, samples=samples)
        if hit is not None:
            return hit
        path = cache.new_download()
        try:
            source.store.download(source.key(name), path)
        except FileNotFoundError:
            where.refuse(Rule.MISSING_FILE, f"listed, not at {source.store.uri_of(source.key(name))}")
        except OSError as exc:  # a listed name no file can have (too long, say): the manifest's fault
            if exc.errno not in (errno.ENAMETOOLONG, errno.EINVAL, errno.ENOTDIR):
                raise
            where.refuse(Rule.MISSING_FILE, f"listed, cannot be a file at {source.store.uri_of(source.key(name))}: "
                                            f"{exc.strerror}")
        digest = scan(path, samples=samples)
        if digest.sha256 != sha256:
            where.refuse(Rule.SHA256, f"SHA-256 {digest.sha256}, the manifest says {sha256}")
        if digest.first_non_finite is not None:
            where.refuse(Rule.NON_FINITE, f"float32 number {digest.first_non_finite} is NaN or Inf")
        return cache.stage(path, digest, samples=samples)


def check_sessions(dataset: VerifiedDataset, min_labelled_sessions: int, validation_split: float,
                   test_split: float) -> None:
    """Refuse a version with too few labelled sessions to train, or a split a model would find empty."""
    where, split = Where(dataset.manifest.dataset_id, MANIFEST_FILE), dataset.split
    if int(dataset.labelled.sum()) < min_labelled_sessions:
        where.refuse(Rule.TOO_FEW_LABELLED,
                     f"{int(dataset.labelled.sum())} labelled sessions, training needs {min_labelled_sessions}")
    for name in SPLITS:
        if not len(dataset.indices(name)):
            where.refuse(Rule.EMPTY_SPLIT, (
                f"no labelled session falls in the {name} split (pinned heimdall:split, or too few sessions for "
                f"validation_split={validation_split}, test_split={test_split} over {split.frame.block_m:g} m "
                f"blocks with a {split.frame.buffer_m:g} m buffer)"))


def _index(manifest: Manifest, uri: str, shards: list[ShardIndex], frame: SpatialFrame, validation_split: float,
           test_split: float) -> VerifiedDataset:
    """One session index over all shards, in manifest order, split on the lineage's `frame`."""
    seen: dict[str, str] = {}
    for shard in shards:
        for session_id in shard.session_ids:
            if session_id in seen:
                Where(manifest.dataset_id, shard.file).refuse(
                    Rule.DUPLICATE_SESSION, f"session {session_id} is also in {seen[session_id]}")
            seen[session_id] = shard.file
    receivers, counts = len(manifest.receivers), [len(s.session_ids) for s in shards]
    emitter = np.concatenate([np.zeros((0, 3)), *(s.emitter for s in shards)])
    labelled = int((~np.isnan(emitter[:, 0])).sum())
    if labelled != manifest.labelled_sessions:
        Where(manifest.dataset_id, MANIFEST_FILE).refuse(
            Rule.LABELLED_COUNT, f"labelled_sessions {manifest.labelled_sessions}, the recordings label {labelled}")
    session_ids = [sid for s in shards for sid in s.session_ids]
    pins = [pin for s in shards for pin in s.pins]
    return VerifiedDataset(
        manifest=manifest, uri=uri, session_ids=np.array(session_ids, dtype=str),
        split=frame.split(session_ids, emitter[:, :2], pins, validation_split=validation_split,
                          test_split=test_split),
        emitter=emitter,
        online=np.concatenate([np.zeros((0, receivers), dtype=bool), *(s.online for s in shards)]),
        shard_of=np.repeat(np.arange(len(shards), dtype=np.int64), counts),
        row_of=np.concatenate([np.zeros(0, np.int64), *(np.arange(n, dtype=np.int64) for n in counts)]),
        data_files=np.array([s.data_files for s in shards], dtype=str).reshape(len(shards), receivers))
