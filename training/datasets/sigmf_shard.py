"""One shard's SigMF files, built in memory: each receiver's `.sigmf-meta` and `.sigmf-data`, then the collection.

The metadata is built, hashed and validated with the `sigmf` package, as the contract asks
(`dataset.md`); `training.datasets.writer` decides where the files go and when they count.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from sigmf.sigmffile import SigMFCollection, SigMFFile

from training.datasets.manifest import COLLECTION_FILE, DATATYPE, Receiver, data_name, meta_name

EXTENSIONS = [
    {"name": "signal", "version": "1.0.0", "optional": True},
    {"name": "heimdall", "version": "1.0.0", "optional": False},
]
SAMPLE_DTYPE = np.dtype("<c8")  # cf32_le


@dataclass
class SessionRecord:
    """One transmission as every receiver heard it, receivers in the dataset's order."""

    session_id: str
    time: datetime  # timezone-aware; written as UTC
    emitter: tuple[float, float, float] | None  # (latitude, longitude, altitude_m); None = unlabelled
    split: str | None  # pins the session to train/val/test; None lets the trainer choose
    online: np.ndarray  # bool [R]
    iq: np.ndarray  # complex64 [R, S], scaled so 10*log10(mean|x|^2) is dBm; zeros where offline


@dataclass(frozen=True)
class VersionHeader:
    """What every recording of the version shares."""

    dataset_id: str
    center_frequency_hz: float
    sample_rate_hz: float
    samples_per_capture: int
    receivers: tuple[Receiver, ...]


def shard_files(header: VersionHeader, path: str, records: list[SessionRecord]) -> dict[str, bytes]:
    """Every file of one shard, in the manifest's order: each receiver's meta and data, then the collection."""
    files: dict[str, bytes] = {}
    for column, receiver in enumerate(header.receivers):
        data = np.stack([record.iq[column] for record in records]).astype(SAMPLE_DTYPE).tobytes()
        online = [bool(record.online[column]) for record in records]
        files[meta_name(receiver.id)] = _recording_meta(header, receiver, records, online, data)
        files[data_name(receiver.id)] = data
    files[COLLECTION_FILE] = _collection(header, path, files)
    return files


def _recording_meta(
    header: VersionHeader, receiver: Receiver, records: list[SessionRecord], online: list[bool], data: bytes
) -> bytes:
    samples = header.samples_per_capture
    metadata = {
        "global": {
            "core:datatype": DATATYPE,
            "core:sample_rate": header.sample_rate_hz,
            "core:num_channels": 1,
            "core:geolocation": _point(receiver.latitude, receiver.longitude, receiver.altitude_m),
            "core:extensions": EXTENSIONS,
            "heimdall:receiver_id": receiver.id,
        },
        "captures": [
            {
                "core:sample_start": i * samples,
                "core:frequency": header.center_frequency_hz,
                "core:datetime": rfc3339_utc(record.time, timespec="milliseconds"),
                "heimdall:session_id": record.session_id,
            }
            for i, record in enumerate(records)
        ],
        "annotations": [_annotation(i * samples, samples, record, online[i]) for i, record in enumerate(records)],
    }
    recording = SigMFFile(metadata=metadata)
    recording.set_data_file(data_buffer=io.BytesIO(data))  # sets core:sha512
    recording.validate()
    return (recording.dumps() + "\n").encode()


def _annotation(sample_start: int, sample_count: int, record: SessionRecord, online: bool) -> dict:
    annotation = {
        "core:sample_start": sample_start,
        "core:sample_count": sample_count,
        "heimdall:session_id": record.session_id,
        "heimdall:online": online,
    }
    if record.emitter is not None:
        latitude, longitude, altitude_m = record.emitter
        annotation["signal:emitter"] = {"geolocation": _point(latitude, longitude, altitude_m)}
    if record.split is not None:
        annotation["heimdall:split"] = record.split
    return annotation


def _collection(header: VersionHeader, path: str, files: dict[str, bytes]) -> bytes:
    """SigMF requires each stream's hash to be the SHA-512 of its .sigmf-meta file."""
    streams = [
        {"name": f"rx-{receiver.id}", "hash": hashlib.sha512(files[meta_name(receiver.id)]).hexdigest()}
        for receiver in header.receivers
    ]
    collection = SigMFCollection(
        metadata={"collection": {"core:description": f"{header.dataset_id} {path}", "core:streams": streams}},
        skip_checksums=True,  # the metas are in memory, not on a disk sigmf could hash
    )
    return (collection.dumps() + "\n").encode()


def _point(latitude: float, longitude: float, altitude_m: float) -> dict:
    return {"type": "Point", "coordinates": [float(longitude), float(latitude), float(altitude_m)]}


def rfc3339_utc(moment: datetime, *, timespec: str) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"{moment} must be timezone-aware")
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec=timespec) + "Z"

