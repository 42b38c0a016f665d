"""Writes one dataset version of `heimdall.dataset/1` to a local folder or an S3 prefix.

Sessions stream in and only one shard's samples are held at a time, so memory stays flat
whatever the dataset's size. `dataset.json` is written last: it is the commit point, and a
version without it does not exist for a reader. A local version is built in a hidden
staging folder beside its final place and renamed there at the end; on S3, which has no
rename, the objects already written are deleted when anything fails. The files of one shard
are built by `training.datasets.sigmf_shard`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from training.datasets.manifest import (
    DATASET_ID_PATTERN,
    MANIFEST_FILE,
    SCHEMA,
    SPLITS,
    Manifest,
    Receiver,
    Shard,
    version_key,
)
from training.datasets.sigmf_shard import SessionRecord, VersionHeader, rfc3339_utc, shard_files
from foundation.object_store import LocalStore, ObjectStore, S3Credentials, open_store

log = logging.getLogger(__name__)

Put = Callable[[str, bytes], None]  # writes one file, named relative to the version folder


def write_dataset_version(
    root_uri: str,
    *,
    dataset_id: str,
    version: int,
    parent_version: int | None,
    center_frequency_hz: float,
    sample_rate_hz: float,
    samples_per_capture: int,
    receivers: list[Receiver],
    sessions: Iterable[SessionRecord],
    shard_size: int,
    credentials: S3Credentials | None = None,
    created_at: datetime | None = None,
) -> str:
    """Write `<root>/<dataset_id>/v<version>` and return its (normalised) URI.

    `created_at` defaults to now; pass it to make the manifest reproducible.
    Raises FileExistsError if the version is already committed (versions are immutable),
    ValueError for bad arguments or a bad session record, StorageUnavailable from the store.
    On any failure nothing of this version is left behind.
    """
    header = VersionHeader(dataset_id, center_frequency_hz, sample_rate_hz, samples_per_capture, tuple(receivers))
    _check_arguments(header, version, parent_version, shard_size)
    store = open_store(root_uri, credentials)
    key = version_key(dataset_id, version)
    _refuse_committed(store, key)
    stamp = rfc3339_utc(created_at or datetime.now(timezone.utc), timespec="seconds")

    def write_version(put: Put) -> None:
        shards, labelled = _write_shards(put, header, sessions, shard_size)
        put(MANIFEST_FILE, _manifest(header, version, parent_version, stamp, shards, labelled).to_json().encode())

    if isinstance(store, LocalStore):
        _write_staged_locally(store, key, write_version)
    else:
        _write_with_rollback(store, key, write_version)
    log.info("dataset %s v%d written to %s", dataset_id, version, store.uri_of(key))
    return store.uri_of(key)


def _manifest(header: VersionHeader, version: int, parent_version: int | None, created_at: str,
              shards: list[Shard], labelled: int) -> Manifest:
    return Manifest(
        schema=SCHEMA,
        dataset_id=header.dataset_id,
        version=version,
        parent_version=parent_version,
        created_at=created_at,
        center_frequency_hz=header.center_frequency_hz,
        sample_rate_hz=header.sample_rate_hz,
        samples_per_capture=header.samples_per_capture,
        receivers=list(header.receivers),
        shards=shards,
        sessions=sum(shard.sessions for shard in shards),
        labelled_sessions=labelled,
    )


def _check_arguments(header: VersionHeader, version: int, parent_version: int | None, shard_size: int) -> None:
    problems = []
    if not re.fullmatch(DATASET_ID_PATTERN, header.dataset_id):
        problems.append(f"dataset_id {header.dataset_id!r} does not match {DATASET_ID_PATTERN}")
    if version < 1:
        problems.append(f"version {version} must be >= 1")
    if parent_version is not None and not 1 <= parent_version < version:
        problems.append(f"parent_version {parent_version} must be between 1 and version-1")
    if shard_size < 1 or header.samples_per_capture < 1:
        problems.append("shard_size and samples_per_capture must be >= 1")
    if header.sample_rate_hz <= 0 or header.center_frequency_hz <= 0:
        problems.append("sample_rate_hz and center_frequency_hz must be > 0")
    ids = [receiver.id for receiver in header.receivers]
    if not ids or len(set(ids)) != len(ids):
        problems.append(f"receivers must be a non-empty list of unique ids, got {ids}")
    if problems:
        raise ValueError(f"dataset {header.dataset_id} v{version}: " + "; ".join(problems))


def _refuse_committed(store: ObjectStore, key: str) -> None:
    if store.exists(f"{key}/{MANIFEST_FILE}"):
        raise FileExistsError(f"{store.uri_of(key)} is already committed; versions are immutable, write a new one")


def _write_shards(
    put: Put, header: VersionHeader, sessions: Iterable[SessionRecord], shard_size: int
) -> tuple[list[Shard], int]:
    """Write every shard; return the manifest's shard entries and the labelled-session count."""
    shards: list[Shard] = []
    labelled = 0
    seen_ids: set[str] = set()
    for index, records in enumerate(_batches(sessions, shard_size)):
        for record in records:
            _check_record(record, header, seen_ids)
        path = f"shards/{index:06d}"
        files = shard_files(header, path, records)
        for name, content in files.items():
            put(f"{path}/{name}", content)
        hashes = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
        shards.append(Shard(path=path, sessions=len(records), files=hashes))
        labelled += sum(record.emitter is not None for record in records)
    if not shards:
        raise ValueError(f"dataset {header.dataset_id}: no sessions to write")
    return shards, labelled


def _batches(items: Iterable[SessionRecord], size: int) -> Iterator[list[SessionRecord]]:
    batch: list[SessionRecord] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_record(record: SessionRecord, header: VersionHeader, seen_ids: set[str]) -> None:
    """Refuse what a reader would refuse, before anything of the shard is written."""
    where = f"dataset {header.dataset_id}: session {record.session_id!r}"
    expected = (len(header.receivers), header.samples_per_capture)
    if record.session_id in seen_ids or not record.session_id:
        raise ValueError(f"{where}: session ids must be non-empty and unique")
    seen_ids.add(record.session_id)
    if record.time.tzinfo is None:
        raise ValueError(f"{where}: time must be timezone-aware")
    if np.shape(record.iq) != expected or np.shape(record.online) != expected[:1]:
        raise ValueError(f"{where}: iq must be {expected} and online ({expected[0]},)")
    online = np.asarray(record.online)
    if online.dtype != np.bool_:
        raise ValueError(f"{where}: online must be a bool array")
    if not np.isfinite(record.iq).all():
        raise ValueError(f"{where}: iq holds NaN or Inf")
    if np.any(np.asarray(record.iq)[~online] != 0):
        raise ValueError(f"{where}: offline receivers must carry all-zero iq")
    if record.split is not None and record.split not in SPLITS:
        raise ValueError(f"{where}: split {record.split!r} is not one of {SPLITS}")
    if record.emitter is not None and not (-90 <= record.emitter[0] <= 90 and -180 <= record.emitter[1] <= 180):
        raise ValueError(f"{where}: emitter {record.emitter} is out of range")



def _write_staged_locally(store: LocalStore, key: str, write_version: Callable[[Put], None]) -> None:
    """Build the version in a hidden sibling folder, then rename it into place in one step."""
    final = store.root / key
    staging = final.parent / f".{final.name}.staging-{uuid.uuid4().hex}"
    staging_store = LocalStore(str(staging))
    try:
        write_version(staging_store.write_bytes)
        _remove_uncommitted(final)
        os.rename(staging, final)  # fails if another writer committed meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _remove_uncommitted(final: Path) -> None:
    """A folder without a manifest is what a killed writer left: no reader can see it."""
    if (final / MANIFEST_FILE).exists():
        raise FileExistsError(f"{final} was committed by another writer meanwhile")
    if final.exists():
        log.warning("removing uncommitted leftovers at %s", final)
        shutil.rmtree(final)


def _write_with_rollback(store: ObjectStore, key: str, write_version: Callable[[Put], None]) -> None:
    """Write objects straight under the version prefix; delete them all if anything fails."""
    for leftover in store.list(f"{key}/"):
        store.delete(leftover)  # an earlier writer's uncommitted objects: no manifest points at them
    written: list[str] = []

    def put(name: str, content: bytes) -> None:
        written.append(f"{key}/{name}")  # before the put, so a half-done put is cleaned too
        store.write_bytes(f"{key}/{name}", content)

    try:
        write_version(put)
    except BaseException:
        _delete_quietly(store, reversed(written))
        raise


def _delete_quietly(store: ObjectStore, keys: Iterable[str]) -> None:
    """Clean up after a failure without hiding the failure itself."""
    for key in keys:
        try:
            store.delete(key)
        except Exception as exc:  # noqa: BLE001 - the original error is the one to raise
            log.warning("could not delete %s while rolling back: %s", store.uri_of(key), exc)
