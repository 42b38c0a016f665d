"""The rules of `heimdall.dataset/1` that a reader checks file by file (shared/contracts/dataset.md).

Pure functions over parsed JSON and manifest models: no I/O, so `training.datasets.reader`
decides what to fetch and when, and these decide whether what was fetched is acceptable.
Every refusal raises `DatasetError` through `Where.refuse`, naming dataset, file and rule.

Size: every rule of `heimdall.dataset/1` that a reader checks, one function per group of rules.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

import numpy as np
from jsonschema.exceptions import ValidationError as SchemaError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for
from pydantic import ValidationError
from sigmf.schema import get_schema

from training.datasets.manifest import (
    COLLECTION_FILE, DATATYPE, MANIFEST_FILE, SPLITS, Manifest, Shard, data_name, meta_name,
)
from foundation.errors import DatasetError

# Emitters may fly (APRS balloons reach ~40 km); the manifest's receivers keep its own tighter bound.
ALTITUDE_RANGE_M = (-500.0, 50_000.0)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_RECORDING_FILE = re.compile(r"^rx-(.+)\.sigmf-(meta|data)$")


class Rule(StrEnum):
    """The rule a refused dataset breaks; `DatasetError.rule` carries one of these."""

    VERSION_FOLDER = "version-folder"  # URI is not `<root>/<dataset_id>/v<version>` of this manifest
    MISSING_FILE = "missing-file"  # dataset.json or a listed file is not in the store
    SCHEMA = "schema"  # dataset.json `schema` is not heimdall.dataset/1
    MANIFEST = "manifest-invalid"  # dataset.json is not JSON or breaks the Manifest model
    SHARD_LOCATION = "shard-location"  # a shard path escapes the allowed object-store locations
    SHARD_FILES = "shard-files"  # a shard's files are not one meta + data per receiver + the collection
    UNKNOWN_RECEIVER = "unknown-receiver"  # a recording's receiver is missing from `receivers`
    SHA256 = "sha256"  # a file's SHA-256 differs from the manifest's
    NON_FINITE = "non-finite-samples"  # NaN or Inf in a .sigmf-data file
    SIGMF = "sigmf-invalid"  # a .sigmf-meta is not JSON or breaks the SigMF schema
    SIGMF_SHA512 = "sigmf-sha512"  # a meta's core:sha512 is not its data file's SHA-512
    COLLECTION = "collection-hash"  # the collection's streams are not the shard's metas' SHA-512
    DATATYPE = "datatype"  # not cf32_le, one channel
    SAMPLE_RATE = "sample-rate"  # core:sample_rate differs from the manifest's
    RECEIVER_ID = "receiver-id"  # heimdall:receiver_id differs from the file name's
    COORDINATES = "coordinates"  # latitude, longitude or altitude out of range
    CAPTURE_COUNT = "capture-count"  # captures/annotations differ from the shard's `sessions`
    CAPTURE_LENGTH = "capture-length"  # sample_start/sample_count/data size differ from samples_per_capture
    SESSION_IDS = "session-ids"  # recordings of a shard disagree on the sessions
    ONLINE_FLAG = "online-flag"  # heimdall:online missing or not a bool
    PINNED_SPLIT = "pinned-split"  # heimdall:split not one of train, val, test
    SESSION_LABELS = "session-labels"  # receivers disagree on a session's emitter or pinned split
    DUPLICATE_SESSION = "duplicate-session"  # a session id appears in two shards
    SESSION_COUNT = "session-count"  # manifest `sessions` differs from its shards' total
    LABELLED_COUNT = "labelled-count"  # manifest `labelled_sessions` differs from the recordings
    TOO_FEW_LABELLED = "too-few-labelled"  # fewer labelled sessions than min_labelled_sessions
    EMPTY_SPLIT = "empty-split"  # no labelled session in the train, val or test split


@dataclass(frozen=True)
class Where:
    """The dataset and file an error names."""

    dataset: str
    file: str

    def refuse(self, rule: Rule, detail: str = "") -> NoReturn:
        raise DatasetError(self.dataset, self.file, str(rule), detail)


# ---------------------------------------------------------------- one recording (meta + data)


@dataclass
class Recording:
    receiver_id: str
    file: str  # the meta's name in errors
    session_ids: list[str]
    online: list[bool]
    emitters: list[tuple[float, float, float] | None]  # (latitude, longitude, altitude_m)
    pins: list[str | None]


def check_point(where: Where, what: str, point: object) -> tuple[float, float, float]:
    """(latitude, longitude, altitude_m) of a GeoJSON Point `[lon, lat, alt]`, range-checked."""
    coords = point.get("coordinates") if isinstance(point, dict) else None
    if not isinstance(coords, list) or len(coords) not in (2, 3) or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords):
        where.refuse(Rule.COORDINATES, f"{what} is not a GeoJSON Point [lon, lat, alt]: {point!r}")
    longitude, latitude, altitude_m = (*map(float, coords), 0.0)[:3]
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180
            and ALTITUDE_RANGE_M[0] <= altitude_m <= ALTITUDE_RANGE_M[1]):
        where.refuse(Rule.COORDINATES, f"{what} [lon, lat, alt] = {coords} is out of range")
    return latitude, longitude, altitude_m


def parse_meta(where: Where, text: bytes) -> dict:
    try:
        meta = json.loads(text)
        # Captures and annotations are checked below, one by one; validating thousands of
        # them against the JSON Schema would cost more than the whole download.
        validate_sigmf({**meta, "captures": meta["captures"][:1], "annotations": meta["annotations"][:1]})
    except (ValueError, KeyError, TypeError, SchemaError) as exc:
        where.refuse(Rule.SIGMF, str(exc).splitlines()[0])
    return meta


@functools.cache
def sigmf_validator():
    """The SigMF schema's validator, checked and built once per process: `sigmf.validate.validate`
    re-checks the schema on every call (0.2 s a file here, against 2 ms for the validation)."""
    schema = get_schema()
    validator = validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)


def validate_sigmf(meta: dict) -> None:
    """What `sigmf.validate.validate` checks (its undeclared-extension warning aside): the SigMF
    JSON Schema, and captures and annotations in order of sample_start. Raises SchemaError."""
    error = best_match(sigmf_validator().iter_errors(meta))
    if error is not None:
        raise error
    for key in ("captures", "annotations"):
        starts = [item["core:sample_start"] for item in meta[key]]
        if starts != sorted(starts):
            raise SchemaError(f"{key} has incorrect sample start ordering.")


def check_global(where: Where, meta: dict, receiver_id: str, manifest: Manifest, data_sha512: str) -> None:
    head = meta["global"]
    if head.get("core:datatype") != DATATYPE or head.get("core:num_channels", 1) != 1:
        where.refuse(Rule.DATATYPE, f"{head.get('core:datatype')} with {head.get('core:num_channels')} "
                                    f"channels, the contract says {DATATYPE} with 1")
    rate = head.get("core:sample_rate")
    if not isinstance(rate, (int, float)) or not math.isclose(rate, manifest.sample_rate_hz, rel_tol=1e-9):
        where.refuse(Rule.SAMPLE_RATE, f"core:sample_rate {rate}, the manifest says {manifest.sample_rate_hz}")
    if head.get("heimdall:receiver_id") != receiver_id:
        where.refuse(Rule.RECEIVER_ID, f"heimdall:receiver_id {head.get('heimdall:receiver_id')!r}, "
                                       f"the file name says {receiver_id!r}")
    if "core:geolocation" in head:
        check_point(where, "core:geolocation", head["core:geolocation"])
    if head.get("core:sha512", data_sha512) != data_sha512:
        where.refuse(Rule.SIGMF_SHA512, f"core:sha512 is not the SHA-512 of {data_name(receiver_id)}")


def check_session(where: Where, i: int, capture: dict, note: dict, samples: int) -> str:
    if not isinstance(capture, dict) or not isinstance(note, dict):
        where.refuse(Rule.SIGMF, f"session {i}: capture or annotation is not an object")
    start = i * samples
    if capture.get("core:sample_start") != start or note.get("core:sample_start") != start \
            or note.get("core:sample_count") != samples:
        where.refuse(Rule.CAPTURE_LENGTH, f"session {i}: capture/annotation sample_start "
                                          f"{capture.get('core:sample_start')}/{note.get('core:sample_start')}, "
                                          f"sample_count {note.get('core:sample_count')}; expected {start}, {samples}")
    session_id = capture.get("heimdall:session_id")
    if not isinstance(session_id, str) or not session_id or note.get("heimdall:session_id") != session_id:
        where.refuse(Rule.SESSION_IDS, f"session {i}: capture says {session_id!r}, "
                                       f"annotation says {note.get('heimdall:session_id')!r}")
    if not isinstance(note.get("heimdall:online"), bool):
        where.refuse(Rule.ONLINE_FLAG, f"session {session_id}: heimdall:online is {note.get('heimdall:online')!r}")
    if note.get("heimdall:split", "train") not in SPLITS:
        where.refuse(Rule.PINNED_SPLIT, f"session {session_id}: heimdall:split {note['heimdall:split']!r}")
    return session_id


def check_recording(where: Where, meta: dict, receiver_id: str, sessions: int, manifest: Manifest) -> Recording:
    """Captures and annotations: one per session, S samples each, laid end to end."""
    captures, notes = meta["captures"], meta["annotations"]
    if len(captures) != sessions or len(notes) != sessions:
        where.refuse(Rule.CAPTURE_COUNT, f"{len(captures)} captures and {len(notes)} annotations, "
                                         f"the shard has {sessions} sessions")
    recording = Recording(receiver_id, where.file, [], [], [], [])
    for i, (capture, note) in enumerate(zip(captures, notes)):
        session_id = check_session(where, i, capture, note, manifest.samples_per_capture)
        emitter = note.get("signal:emitter")
        if emitter is not None:
            point = emitter.get("geolocation") if isinstance(emitter, dict) else None
            emitter = check_point(where, f"session {session_id}: signal:emitter", point)
        recording.session_ids.append(session_id)
        recording.online.append(note["heimdall:online"])
        recording.emitters.append(emitter)
        recording.pins.append(note.get("heimdall:split"))
    return recording


def check_collection(where: Where, text: bytes, meta_sha512: dict[str, str]) -> None:
    """The collection lists exactly the shard's recordings, each with its meta's SHA-512."""
    try:
        streams = json.loads(text)["collection"]["core:streams"]
        listed = {stream["name"]: stream["hash"] for stream in streams}
    except (ValueError, KeyError, TypeError) as exc:
        where.refuse(Rule.SIGMF, f"not a SigMF collection: {exc}")
    expected = {f"rx-{rid}": sha512 for rid, sha512 in meta_sha512.items()}
    if listed != expected:
        wrong = sorted(name for name in listed.keys() | expected.keys() if listed.get(name) != expected.get(name))
        where.refuse(Rule.COLLECTION, f"streams {wrong} are missing, extra or not their meta's SHA-512")


# ---------------------------------------------------------------- one shard, then the whole version


@dataclass
class ShardIndex:
    file: str  # the shard's first meta, as errors name the shard
    session_ids: list[str]
    online: np.ndarray  # [n, R] bool; receivers absent from the shard are offline
    emitter: np.ndarray  # [n, 3] latitude, longitude, altitude_m; NaN when unlabelled
    pins: list[str | None]
    data_files: list[str]  # [R] cache entry of each receiver's data, "" when absent


def agree(dataset: str, recordings: list[Recording], attribute: str) -> list:
    """One value per session, from every receiver that gives one: they must all agree."""
    chosen: list = [None] * len(recordings[0].session_ids)
    for recording in recordings:
        for i, value in enumerate(getattr(recording, attribute)):
            if value is not None and chosen[i] is not None and value != chosen[i]:
                Where(dataset, recording.file).refuse(
                    Rule.SESSION_LABELS, f"session {recording.session_ids[i]}: {attribute} {value}, "
                                         f"another receiver says {chosen[i]}")
            chosen[i] = chosen[i] if value is None else value
    return chosen


def merge_shard(dataset: str, recordings: list[Recording], axis: dict[str, int], data_files: list[str]) -> ShardIndex:
    first = recordings[0]
    for recording in recordings[1:]:
        if recording.session_ids != first.session_ids:
            Where(dataset, recording.file).refuse(Rule.SESSION_IDS, f"its session ids differ from {first.file}'s")
    online = np.zeros((len(first.session_ids), len(axis)), dtype=bool)
    for recording in recordings:
        online[:, axis[recording.receiver_id]] = recording.online
    emitter = np.full((len(first.session_ids), 3), np.nan)
    for i, point in enumerate(agree(dataset, recordings, "emitters")):
        if point is not None:
            emitter[i] = point
    return ShardIndex(first.file, first.session_ids, online, emitter, agree(dataset, recordings, "pins"), data_files)


def check_shard_files(dataset: str, shard: Shard, manifest: Manifest) -> list[str]:
    """The receivers of a shard, in manifest order, from its file list (before any download)."""
    where = Where(dataset, shard.path)
    metas, datas = set(), set()
    for name, sha256 in shard.files.items():
        if not _SHA256_HEX.match(sha256.lower()):
            Where(dataset, MANIFEST_FILE).refuse(Rule.MANIFEST, f"{shard.path}/{name}: {sha256!r} is not a SHA-256")
        match = _RECORDING_FILE.match(name)
        if name != COLLECTION_FILE and (not match or "/" in name):
            where.refuse(Rule.SHARD_FILES, f"unexpected file {name!r}")
        if match:
            (metas if match[2] == "meta" else datas).add(match[1])
    if COLLECTION_FILE not in shard.files or metas != datas or not metas:
        where.refuse(Rule.SHARD_FILES, f"needs {COLLECTION_FILE} and a meta and data file per receiver, "
                                       f"has metas for {sorted(metas)} and data for {sorted(datas)}")
    for receiver_id in sorted(metas - {r.id for r in manifest.receivers}):
        Where(dataset, f"{shard.path}/{meta_name(receiver_id)}").refuse(
            Rule.UNKNOWN_RECEIVER, f"receiver {receiver_id!r} is not in {MANIFEST_FILE} `receivers`")
    return [r.id for r in manifest.receivers if r.id in metas]


def refuse_invalid_manifest(where: Where, exc: ValidationError) -> NoReturn:
    errors = exc.errors()
    loc = errors[0]["loc"]
    out_of_range = (loc[0] == "receivers" and loc[-1] in ("latitude", "longitude", "altitude_m")
                    and errors[0]["type"] in ("greater_than_equal", "less_than_equal"))
    fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    where.refuse(Rule.COORDINATES if out_of_range else Rule.MANIFEST, fields)


def check_manifest(where: Where, manifest: Manifest, dataset_id: str, folder: str) -> None:
    """What the model alone cannot see: the URI's layout, unique receivers, the session total."""
    if manifest.dataset_id != dataset_id or folder != f"v{manifest.version}":
        where.refuse(Rule.VERSION_FOLDER, f"manifest is {manifest.dataset_id} v{manifest.version}, "
                                          f"found in {dataset_id}/{folder}")
    ids = [receiver.id for receiver in manifest.receivers]
    if len(set(ids)) != len(ids):
        where.refuse(Rule.MANIFEST, f"receiver ids repeat: {ids}")
    if sum(shard.sessions for shard in manifest.shards) != manifest.sessions:
        where.refuse(Rule.SESSION_COUNT, f"sessions {manifest.sessions}, "
                                         f"the shards hold {sum(s.sessions for s in manifest.shards)}")
