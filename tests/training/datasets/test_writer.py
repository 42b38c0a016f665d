"""`write_dataset_version` writes what `heimdall.dataset/1` promises, or nothing at all."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sigmf.sigmffile import SigMFCollection, SigMFFile, fromfile

from training.datasets.manifest import Manifest, Receiver
from training.datasets.sigmf_shard import SessionRecord
from training.datasets.writer import _write_with_rollback, write_dataset_version
from foundation.object_store import LocalStore

RECEIVERS = [
    Receiver(id="giaveno", latitude=45.03, longitude=7.27, altitude_m=600.0),
    Receiver(id="torino", latitude=45.044, longitude=7.672, altitude_m=250.0),
    Receiver(id="genova", latitude=44.395, longitude=8.956, altitude_m=100.0),
]
SAMPLES = 64
SESSIONS = 30
SHARD_SIZE = 16
EXAMPLE_SHARD = Path("/work/shared/contracts/examples/nw-italy-mini/v1/shards/000000")
START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def make_session(i: int) -> SessionRecord:
    """Session i: every 5th unlabelled, every 7th with genova offline, every 4th pinned to val."""
    rng = np.random.default_rng(i)
    online = np.array([True, True, i % 7 != 3])
    iq = (rng.standard_normal((3, SAMPLES)) + 1j * rng.standard_normal((3, SAMPLES))).astype(np.complex64) * 1e-6
    iq[~online] = 0
    return SessionRecord(
        session_id=f"tiny-{i:07d}",
        time=START + timedelta(seconds=30 * i),
        emitter=None if i % 5 == 0 else (45.0 + i * 1e-3, 7.5, 2.0),
        split="val" if i % 4 == 0 else None,
        online=online,
        iq=iq,
    )


def write(root, sessions, version=1, **overrides) -> str:
    arguments = dict(
        dataset_id="tiny",
        version=version,
        parent_version=None,
        center_frequency_hz=145.5e6,
        sample_rate_hz=12_500.0,
        samples_per_capture=SAMPLES,
        receivers=RECEIVERS,
        sessions=sessions,
        shard_size=SHARD_SIZE,
    )
    return write_dataset_version(str(root), **(arguments | overrides))


def failing_after(count: int):
    for i in range(count):
        yield make_session(i)
    raise RuntimeError("acquisition lost")


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    uri = write(root, (make_session(i) for i in range(SESSIONS)))
    assert uri == f"file://{root.resolve()}/tiny/v1"
    return root / "tiny" / "v1"


def test_layout_is_the_contracts(written):
    expected = ["dataset.json"]
    for shard in ("000000", "000001"):
        expected.append(f"shards/{shard}/shard.sigmf-collection")
        for rx in ("giaveno", "torino", "genova"):
            expected += [f"shards/{shard}/rx-{rx}.sigmf-data", f"shards/{shard}/rx-{rx}.sigmf-meta"]
    assert files_under(written) == sorted(expected)
    assert files_under(written.parent) == [f"v1/{name}" for name in sorted(expected)]  # no staging left


def test_manifest_counts_sessions_and_hashes_every_file(written):
    manifest = Manifest.model_validate_json((written / "dataset.json").read_text())
    assert manifest.schema_ == "heimdall.dataset/1"
    assert (manifest.sessions, manifest.labelled_sessions) == (SESSIONS, SESSIONS - 6)
    assert [(s.path, s.sessions) for s in manifest.shards] == [("shards/000000", 16), ("shards/000001", 14)]
    assert manifest.receivers == RECEIVERS
    assert manifest.created_at.endswith("Z")
    datetime.strptime(manifest.created_at, "%Y-%m-%dT%H:%M:%SZ")
    for shard in manifest.shards:
        assert len(shard.files) == 7
        for name, sha256 in shard.files.items():
            assert hashlib.sha256((written / shard.path / name).read_bytes()).hexdigest() == sha256


def test_recordings_validate_with_sigmf_and_hold_the_samples(written):
    recording = fromfile(written / "shards/000001/rx-genova.sigmf-meta")  # checks core:sha512 too
    assert isinstance(recording, SigMFFile)
    recording.validate()
    samples = recording.read_samples()
    expected = np.concatenate([make_session(i).iq[2] for i in range(16, 30)])
    np.testing.assert_array_equal(samples, expected)


def test_meta_carries_the_contracts_keys(written):
    meta = json.loads((written / "shards/000001/rx-genova.sigmf-meta").read_text())
    glob = meta["global"]
    assert glob["core:datatype"] == "cf32_le" and glob["core:num_channels"] == 1
    assert glob["core:sample_rate"] == 12_500.0
    assert glob["core:geolocation"] == {"type": "Point", "coordinates": [8.956, 44.395, 100.0]}
    assert glob["heimdall:receiver_id"] == "genova"
    assert {e["name"]: e["version"] for e in glob["core:extensions"]} == {"signal": "1.0.0", "heimdall": "1.0.0"}
    data = (written / "shards/000001/rx-genova.sigmf-data").read_bytes()
    assert glob["core:sha512"] == hashlib.sha512(data).hexdigest()
    captures, annotations = meta["captures"], meta["annotations"]
    assert [c["core:sample_start"] for c in captures] == [i * SAMPLES for i in range(14)]
    assert captures[0] == {
        "core:sample_start": 0,
        "core:frequency": 145.5e6,
        "core:datetime": "2026-11-01T00:08:00.000Z",
        "heimdall:session_id": "tiny-0000016",
    }
    by_id = {a["heimdall:session_id"]: a for a in annotations}
    assert by_id["tiny-0000016"]["heimdall:split"] == "val"
    latitude, longitude, altitude_m = make_session(16).emitter
    assert by_id["tiny-0000016"]["signal:emitter"] == {
        "geolocation": {"type": "Point", "coordinates": [longitude, latitude, altitude_m]}
    }
    assert "signal:emitter" not in by_id["tiny-0000020"]  # unlabelled
    assert "heimdall:split" not in by_id["tiny-0000017"]
    assert by_id["tiny-0000017"]["heimdall:online"] is False  # 17 % 7 == 3: genova offline
    assert all(a["core:sample_count"] == SAMPLES for a in annotations)


@pytest.mark.skipif(not EXAMPLE_SHARD.is_dir(), reason="the acquisition team's example is not mounted")
def test_keys_are_laid_out_like_the_acquisition_writers_example(written):
    ours = json.loads((written / "shards/000000/rx-giaveno.sigmf-meta").read_text())
    theirs = json.loads((EXAMPLE_SHARD / "rx-giaveno.sigmf-meta").read_text())
    assert list(ours) == list(theirs)
    assert set(ours["global"]) == set(theirs["global"])
    assert set(ours["captures"][0]) == set(theirs["captures"][0])
    assert set(ours["annotations"][1]) == set(theirs["annotations"][0])  # session 1: labelled, not pinned
    ours = json.loads((written / "shards/000000/shard.sigmf-collection").read_text())
    theirs = json.loads((EXAMPLE_SHARD / "shard.sigmf-collection").read_text())
    assert set(ours["collection"]) == set(theirs["collection"])
    assert set(ours["collection"]["core:streams"][0]) == set(theirs["collection"]["core:streams"][0])


def test_collection_hashes_are_sha512_of_the_metas(written):
    shard = written / "shards/000000"
    collection = json.loads((shard / "shard.sigmf-collection").read_text())["collection"]
    assert [s["name"] for s in collection["core:streams"]] == ["rx-giaveno", "rx-torino", "rx-genova"]
    for stream in collection["core:streams"]:
        meta = (shard / f"{stream['name']}.sigmf-meta").read_bytes()
        assert stream["hash"] == hashlib.sha512(meta).hexdigest()
    assert isinstance(fromfile(shard / "shard.sigmf-collection"), SigMFCollection)  # sigmf re-checks the hashes


def test_an_existing_version_is_refused_and_left_intact(written):
    before = {name: (written / name).read_bytes() for name in files_under(written)}
    with pytest.raises(FileExistsError, match="immutable"):
        write(written.parent.parent, (make_session(i) for i in range(3)))
    assert {name: (written / name).read_bytes() for name in files_under(written)} == before


def test_a_failure_mid_write_leaves_nothing_of_the_version(tmp_path):
    with pytest.raises(RuntimeError, match="acquisition lost"):
        write(tmp_path, failing_after(SHARD_SIZE + 3))  # after one whole shard
    assert files_under(tmp_path) == []


def test_a_bad_record_is_refused_before_commit(tmp_path):
    def sessions():
        yield make_session(0)
        bad = make_session(1)
        bad.online[0] = False  # but its samples are not zeros
        yield bad

    with pytest.raises(ValueError, match="all-zero"):
        write(tmp_path, sessions())
    assert files_under(tmp_path) == []


def test_object_store_writes_are_rolled_back_on_failure(tmp_path):
    """The S3 path, without a rename: every object written so far is deleted."""
    store = LocalStore(str(tmp_path))
    store.write_bytes("tiny/v1/shards/000009/rx-old.sigmf-data", b"left by a killed writer")

    def write_version(put):
        put("shards/000000/rx-a.sigmf-data", b"x")
        put("shards/000000/rx-a.sigmf-meta", b"{}")
        raise RuntimeError("connection reset")

    with pytest.raises(RuntimeError, match="connection reset"):
        _write_with_rollback(store, "tiny/v1", write_version)
    assert store.list() == []


def test_a_new_version_goes_beside_the_old_one(tmp_path):
    write(tmp_path, (make_session(i) for i in range(3)))
    uri = write(tmp_path, (make_session(i) for i in range(3, 6)), version=2, parent_version=1)
    assert uri.endswith("/tiny/v2")
    manifest = Manifest.model_validate_json(Path(uri.removeprefix("file://"), "dataset.json").read_text())
    assert (manifest.version, manifest.parent_version, manifest.sessions) == (2, 1, 3)
