"""The reading side of `heimdall.dataset/1`: the contract's example is accepted, and every
rule the contract names is refused on a copy of it broken in exactly one way.

Each broken copy is re-sealed (SigMF SHA-512s, collection stream hashes, manifest SHA-256s
recomputed bottom-up) so that the intended rule fires, not the hash rule before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training.datasets.reader import DatasetReader, Rule, VerifiedDataset
from foundation.errors import DatasetError
from training.datasets.splits import assign_split

DATASET_ID = "nw-italy-mini"
RECEIVERS = ["giaveno", "montanaro", "torino", "coazze", "giovi", "genova", "milano"]
SHARD0, SHARD1 = "shards/000000", "shards/000001"
S = 256


# ---------------------------------------------------------------- helpers


def load(path: Path):
    return json.loads(path.read_text())


def save(path: Path, document) -> None:
    path.write_text(json.dumps(document, indent=2))


def reseal(version: Path, *, metas: bool = True, collections: bool = True) -> None:
    """Recompute every hash from the bottom up: data -> meta -> collection -> manifest."""
    manifest = load(version / "dataset.json")
    for shard in manifest["shards"]:
        folder = version / shard["path"]
        for meta_path in sorted(folder.glob("*.sigmf-meta")) if metas else []:
            data_sha512 = hashlib.sha512(meta_path.with_suffix(".sigmf-data").read_bytes()).hexdigest()
            edit_json(meta_path, lambda m: m["global"].update({"core:sha512": data_sha512}))
        collection_path = folder / "shard.sigmf-collection"
        if collections and collection_path.exists():
            collection = load(collection_path)
            for stream in collection["collection"]["core:streams"]:
                stream["hash"] = hashlib.sha512((folder / f"{stream['name']}.sigmf-meta").read_bytes()).hexdigest()
            save(collection_path, collection)
        for name in shard["files"]:
            if (folder / name).exists():
                shard["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    save(version / "dataset.json", manifest)


def edit_json(path: Path, change) -> None:
    document = load(path)
    change(document)
    save(path, document)


def edit_meta(version: Path, shard: str, receiver: str, change) -> None:
    edit_json(version / shard / f"rx-{receiver}.sigmf-meta", change)


def edit_manifest(version: Path, change) -> None:
    edit_json(version / "dataset.json", change)


def open_version(uri, cache: Path, *, min_labelled: int = 20, **reader_options) -> VerifiedDataset:
    reader = DatasetReader(str(uri), cache_dir=cache, **reader_options)
    return reader.open(validation_split=0.15, test_split=0.15, min_labelled_sessions=min_labelled)


def cached_files(cache: Path) -> list[Path]:
    """The cache's entries (`sha256/<hex[:2]>/<hex>`), without their markers."""
    return sorted(p for p in (cache / "sha256").rglob("*") if p.is_file())


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def version(tmp_path, example_dataset) -> Path:
    """A writable copy of the example at `<tmp>/root/nw-italy-mini/v1`."""
    target = tmp_path / "root" / DATASET_ID / "v1"
    shutil.copytree(example_dataset, target, copy_function=shutil.copyfile)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


# ---------------------------------------------------------------- the example is accepted


def test_the_example_is_accepted_and_indexed(example_dataset, cache):
    data = open_version(example_dataset, cache)
    assert len(data) == 24 and int(data.labelled.sum()) == 24
    assert [r.id for r in data.receivers] == RECEIVERS and data.online.shape == (24, 7)
    assert int((~data.online).sum()) == 8
    assert data.rx_position.dtype == np.float32 and data.rx_position.shape == (7, 3)
    assert data.rx_position[0].tolist() == pytest.approx([45.03, 7.27, 600.0])
    assert data.emitter.shape == (24, 3) and np.isfinite(data.emitter).all()
    assert sorted(np.concatenate([data.indices(s, labelled_only=False) for s in ("train", "val", "test")])) == \
        list(range(24))  # every session in one split
    used = np.concatenate([data.indices(s) for s in ("train", "val", "test")])
    assert sorted([*used, *np.flatnonzero(data.split.buffered)]) == list(range(24))  # all but the spatial buffer
    manifest = load(example_dataset / "dataset.json")
    listed = {sha for shard in manifest["shards"] for sha in shard["files"].values()}
    entries = cached_files(cache)
    assert {p.name for p in entries} == listed  # every file verified and cached under its SHA-256
    assert all(p.parent.name == p.name[:2] and hashlib.sha256(p.read_bytes()).hexdigest() == p.name for p in entries)


def test_read_session_zeros_offline_receivers_and_keeps_power(example_dataset, cache):
    data = open_version(example_dataset, cache)
    i = int(np.flatnonzero(data.session_ids == "nw-italy-mini-0000010")[0])
    coazze = RECEIVERS.index("coazze")
    iq, online = data.read_session(i)
    assert iq.dtype == np.float32 and iq.shape == (7, S, 2) and online.dtype == np.float32
    assert online[coazze] == 0 and not iq[coazze].any() and online.sum() == 6
    for r, receiver in enumerate(RECEIVERS):
        if online[r]:
            direct = np.fromfile(example_dataset / SHARD0 / f"rx-{receiver}.sigmf-data", dtype="<f4",
                                 count=2 * S, offset=10 * S * 8).reshape(S, 2)
            power_dbm = 10 * np.log10(np.mean(direct[:, 0] ** 2 + direct[:, 1] ** 2))
            assert 10 * np.log10(np.mean((iq[r] ** 2).sum(-1))) == pytest.approx(power_dbm, abs=1e-4)
    many, many_online = data.read_many([i, 20])
    assert many.shape == (2, 7, S, 2) and np.array_equal(many[0], iq) and np.array_equal(many_online[0], online)
    assert np.array_equal(many[1], data.read_session(20)[0])


def test_a_pickled_dataset_reads_in_another_process_state(example_dataset, cache):
    data = open_version(example_dataset, cache)
    before = data.read_session(5)[0]
    clone = pickle.loads(pickle.dumps(data))  # what a DataLoader worker receives
    assert np.array_equal(clone.read_session(5)[0], before)


def test_reading_every_session_maps_no_cached_file_into_memory(example_dataset, cache):
    """Samples are read with pread, not memory-mapped: the mapped pages an epoch touches would
    count in the job's resident set and grow its peak RSS with the dataset."""
    data = open_version(example_dataset, cache)
    iq, _ = data.read_many(np.arange(len(data)))
    assert np.abs(iq).sum() > 0
    assert str(cache.resolve()) not in Path("/proc/self/maps").read_text()


def test_two_threads_read_the_same_samples_as_one_while_files_are_closed_behind_them(example_dataset, cache,
                                                                                    monkeypatch):
    """A job scores its baselines in a thread beside its export: both read sessions at once. With
    one open file allowed, every read closes another thread's file; none may read a closed (or
    reused) descriptor."""
    from concurrent.futures import ThreadPoolExecutor

    from training.datasets import verified

    data = open_version(example_dataset, cache)
    expected, _ = pickle.loads(pickle.dumps(data)).read_many(np.arange(len(data)))  # a copy: `data` opens no file yet
    monkeypatch.setattr(verified, "OPEN_FILES_MAX", 1)
    real_preadv = os.preadv

    def slow_preadv(fd, buffers, offset):  # widens the moment between taking a file and reading it
        time.sleep(0.001)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", slow_preadv)
    orders = [np.random.default_rng(seed).permutation(len(data)) for seed in range(8)]  # not in step
    with ThreadPoolExecutor(4) as pool:
        reads = list(pool.map(lambda order: data.read_many(order)[0], orders))
    assert all(np.array_equal(iq, expected[order]) for iq, order in zip(reads, orders))


def test_the_training_loader_batches_the_same_sessions_as_single_reads(example_dataset, cache):
    from foundation.train_config import TrainConfig
    from training.fit import build_loaders

    data = open_version(example_dataset, cache)
    train, _ = build_loaders(data, TrainConfig(batch_size=5, seed=3))
    batches = list(train)
    assert [len(b["iq"]) for b in batches] == [5] * (len(data.indices("train")) // 5)
    for batch in batches:
        for iq, online, rx, target in zip(batch["iq"], batch["rx_online"], batch["rx_position"], batch["target"]):
            i = int(np.flatnonzero(np.isclose(data.emitter[:, :2], target.numpy()).all(axis=1))[0])
            single_iq, single_online = data.read_session(i)
            assert np.array_equal(iq.numpy(), single_iq) and np.array_equal(online.numpy(), single_online)
            assert np.array_equal(rx.numpy(), data.rx_position) and iq.dtype == rx.dtype == torch.float32


def test_a_receiver_absent_from_a_shard_is_offline_there(version, cache):
    for suffix in ("meta", "data"):
        (version / SHARD1 / f"rx-milano.sigmf-{suffix}").unlink()
    edit_manifest(version, lambda m: [m["shards"][1]["files"].pop(f"rx-milano.sigmf-{s}") for s in ("meta", "data")])
    edit_json(version / SHARD1 / "shard.sigmf-collection", lambda c: c["collection"].update(
        {"core:streams": [s for s in c["collection"]["core:streams"] if s["name"] != "rx-milano"]}))
    reseal(version)
    data = open_version(version, cache)
    milano = RECEIVERS.index("milano")
    assert not data.online[16:, milano].any() and data.online[:16, milano].all()
    iq, online = data.read_session(20)
    assert online[milano] == 0 and not iq[milano].any()


def test_unlabelled_sessions_are_indexed_but_not_trained_on(version, cache):
    def unlabel(meta):
        for note in meta["annotations"][:2]:
            del note["signal:emitter"]
    for receiver in RECEIVERS:
        edit_meta(version, SHARD1, receiver, unlabel)
    edit_manifest(version, lambda m: m.update(labelled_sessions=22))
    reseal(version)
    data = open_version(version, cache)
    assert int(data.labelled.sum()) == 22 and np.isnan(data.emitter[16:18]).all()
    everything = np.concatenate([data.indices(s, labelled_only=False) for s in ("train", "val", "test")])
    labelled = np.concatenate([data.indices(s) for s in ("train", "val", "test")])
    buffered = set(np.flatnonzero(data.split.buffered))
    assert len(everything) == 24 and sorted(set(everything) - set(labelled) - buffered) == [16, 17]
    assert not buffered & {16, 17}  # no position, no buffer


# ---------------------------------------------------------------- the cache


def test_a_cache_hit_needs_no_download(version, cache):
    open_version(version, cache)
    for data_file in version.rglob("*.sigmf-data"):
        data_file.unlink()  # a second download would now fail with missing-file
    assert len(open_version(version, cache)) == 24


def test_a_refused_version_adds_nothing_to_a_warm_cache(version, cache):
    open_version(version, cache)
    before = cached_files(cache)
    meta_edit(SHARD1, "giovi", lambda m: m["global"].update({"core:sample_rate": 25000.0}))(version)
    with pytest.raises(DatasetError):
        open_version(version, cache)
    assert cached_files(cache) == before


def test_a_damaged_cache_entry_is_fetched_again(version, cache):
    open_version(version, cache)
    entry = next(p for p in cached_files(cache) if p.stat().st_size == 16 * S * 8)
    flip_byte(entry)
    assert len(open_version(version, cache)) == 24
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == entry.name


def test_a_damaged_cache_entry_is_not_trusted_when_the_source_is_gone(version, cache):
    open_version(version, cache)
    open_version(version, cache)  # trusted by its marker this time: the damage below must still be caught
    data_file = version / SHARD0 / "rx-torino.sigmf-data"
    sha256 = hashlib.sha256(data_file.read_bytes()).hexdigest()
    flip_byte(cache / "sha256" / sha256[:2] / sha256)
    data_file.unlink()
    with pytest.raises(DatasetError) as refused:
        open_version(version, cache)
    assert (refused.value.rule, refused.value.file) == (Rule.MISSING_FILE, f"{SHARD0}/rx-torino.sigmf-data")


def test_a_shard_path_no_file_can_have_is_a_dataset_refusal_not_a_crash(version, cache):
    long_name = "s" * 300  # over the file system's 255-byte name limit
    edit_manifest(version, lambda m: m["shards"][0].update(path=long_name))
    with pytest.raises(DatasetError) as refused:
        open_version(version, cache)
    assert refused.value.rule == Rule.MISSING_FILE and refused.value.file.startswith(long_name + "/rx-")


def count_scans(monkeypatch) -> list[str]:
    """The files the cache hashes from now on (the reader's own scan of a download is not counted)."""
    from training.datasets import cache as cache_module

    scanned, real_scan = [], cache_module.scan
    monkeypatch.setattr(cache_module, "scan", lambda path, **kw: scanned.append(Path(path).name) or real_scan(path, **kw))
    return scanned


def test_a_verified_entry_is_trusted_by_its_marker_not_hashed_again(version, cache, monkeypatch):
    first = open_version(version, cache)
    scanned = count_scans(monkeypatch)
    again = open_version(version, cache)
    assert scanned == []  # every entry was trusted: size, mtime, ctime and inode as verified
    assert again.sessions_digest(range(len(again))) == first.sessions_digest(range(len(first)))
    assert np.array_equal(again.read_many(range(24))[0], first.read_many(range(24))[0])


def test_an_entry_changed_in_place_is_hashed_again_and_fetched_again(version, cache, monkeypatch):
    open_version(version, cache)
    entry = next(p for p in cached_files(cache) if p.stat().st_size == 16 * S * 8)
    flip_byte(entry)  # same size; the write gives it the current time as mtime
    scanned = count_scans(monkeypatch)
    assert len(open_version(version, cache)) == 24
    assert scanned == [entry.name]  # the changed entry alone
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == entry.name


def test_an_entry_changed_with_its_mtime_put_back_is_still_caught(version, cache):
    open_version(version, cache)
    entry = next(p for p in cached_files(cache) if p.stat().st_size == 16 * S * 8)
    before = entry.stat()
    flip_byte(entry)
    os.utime(entry, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and mtime as verified; ctime moves
    assert len(open_version(version, cache)) == 24
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == entry.name


def test_an_entry_replaced_by_another_file_of_the_same_size_and_mtime_is_caught(version, cache):
    open_version(version, cache)
    entry = next(p for p in cached_files(cache) if p.stat().st_size == 16 * S * 8)
    impostor = entry.with_name("impostor")
    impostor.write_bytes(bytes(entry.stat().st_size))  # zeros: finite, the right size, the wrong content
    stat = entry.stat()
    os.utime(impostor, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(impostor, entry)  # another inode
    assert len(open_version(version, cache)) == 24
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == entry.name


def test_the_sigmf_check_refuses_what_sigmf_refuses_with_one_validator_per_process(example_dataset):
    from jsonschema.exceptions import ValidationError as SchemaError
    from sigmf.validate import validate as sigmf_validate

    from training.datasets.checks import sigmf_validator, validate_sigmf

    meta = load(example_dataset / SHARD0 / "rx-torino.sigmf-meta")
    capture = meta["captures"][0]
    variants = {
        "as written": meta,
        "no datatype": {**meta, "global": {k: v for k, v in meta["global"].items() if k != "core:datatype"}},
        "rate not a number": {**meta, "global": {**meta["global"], "core:sample_rate": "fast"}},
        "captures out of order": {**meta, "captures": [{**capture, "core:sample_start": 10},
                                                       {**capture, "core:sample_start": 0}]},
    }
    sigmf_validator.cache_clear()
    sigmf_validate(variants.pop("as written"))
    validate_sigmf(meta)
    for name, variant in variants.items():
        with pytest.raises(SchemaError) as theirs:
            sigmf_validate(variant)
        with pytest.raises(SchemaError) as ours:
            validate_sigmf(variant)
        assert str(ours.value).splitlines()[0] == str(theirs.value).splitlines()[0], name
    assert sigmf_validator.cache_info().misses == 1  # the schema is checked once, not once per file


# ---------------------------------------------------------------- splits


def test_splits_are_a_pure_function_of_the_session_id():
    first = [assign_split(f"s-{i}", validation_split=0.15, test_split=0.15) for i in range(4000)]
    grown = [assign_split(f"s-{i}", validation_split=0.15, test_split=0.15) for i in range(8000)]
    assert grown[:4000] == first  # adding sessions never moves an old one
    shares = {s: first.count(s) / len(first) for s in ("train", "val", "test")}
    assert shares["train"] == pytest.approx(0.70, abs=0.03) and shares["test"] == pytest.approx(0.15, abs=0.03)


def test_a_pinned_split_wins_and_bad_shares_are_refused():
    assert assign_split("x", validation_split=0.15, test_split=0.15, pinned="test") == "test"
    with pytest.raises(ValueError):
        assign_split("x", validation_split=0.15, test_split=0.15, pinned="holdout")
    with pytest.raises(ValueError):
        assign_split("x", validation_split=0.6, test_split=0.4)


def test_the_reader_honours_pinned_splits(version, cache):
    drawn = open_version(version, cache).splits
    i = next(i for i in range(16) if drawn[i] == "train")
    edit_meta(version, SHARD0, "torino", lambda m: m["annotations"][i].update({"heimdall:split": "test"}))
    reseal(version)
    pinned = open_version(version, cache).splits
    assert pinned[i] == "test" and np.array_equal(np.delete(pinned, i), np.delete(drawn, i))


# ---------------------------------------------------------------- what a reader must refuse


def meta(shard: str, receiver: str) -> str:
    return f"{shard}/rx-{receiver}.sigmf-meta"


def data(shard: str, receiver: str) -> str:
    return f"{shard}/rx-{receiver}.sigmf-data"


def set_sample(value: float):
    def corrupt(version: Path) -> None:
        path = version / data(SHARD0, "milano")
        samples = np.fromfile(path, dtype="<f4")
        samples[777] = value
        samples.tofile(path)
        reseal(version)
    return corrupt


def meta_edit(shard: str, receiver: str, change, **reseal_options):
    def corrupt(version: Path) -> None:
        edit_meta(version, shard, receiver, change)
        reseal(version, **reseal_options)
    return corrupt


def manifest_edit(change):
    def corrupt(version: Path) -> None:
        edit_manifest(version, change)
    return corrupt


def rename_sessions(version: Path) -> None:
    """Shard 1's sessions take shard 0's ids, in every recording."""
    for receiver in RECEIVERS:
        def rename(m):
            for i, (capture, note) in enumerate(zip(m["captures"], m["annotations"])):
                capture["heimdall:session_id"] = note["heimdall:session_id"] = f"nw-italy-mini-{i:07d}"
        edit_meta(version, SHARD1, receiver, rename)
    reseal(version)


def move_shard_outside(version: Path) -> None:
    elsewhere = version.parents[2] / "elsewhere" / "000001"
    shutil.move(version / SHARD1, elsewhere)
    edit_manifest(version, lambda m: m["shards"][1].update(path=elsewhere.as_uri()))


def truncate_data(version: Path) -> None:
    path = version / data(SHARD0, "giovi")
    path.write_bytes(path.read_bytes()[:-8])
    reseal(version)


def drop_last_session(m) -> None:
    m["captures"].pop()
    m["annotations"].pop()


def shift_capture(m) -> None:
    m["captures"][3]["core:sample_start"] += 1


def fewer_shard_sessions(m) -> None:
    m["shards"][0]["sessions"] = 15
    m["sessions"] = 23


def move_emitter(m) -> None:
    m["annotations"][4]["signal:emitter"]["geolocation"]["coordinates"][0] += 0.01


def emitter_out_of_range(m) -> None:
    m["annotations"][4]["signal:emitter"]["geolocation"]["coordinates"][0] = 200.0


def delete_file(name: str):
    return lambda version: (version / name).unlink()


def write_text(name: str, text: str):
    return lambda version: (version / name).write_text(text)


REFUSALS = {
    # name: (corruption, file named, rule)
    "unknown schema": (manifest_edit(lambda m: m.update(schema="heimdall.dataset/2")), "dataset.json", Rule.SCHEMA),
    "manifest not json": (write_text("dataset.json", "{"), "dataset.json", Rule.MANIFEST),
    "manifest field missing": (manifest_edit(lambda m: m.pop("created_at")), "dataset.json", Rule.MANIFEST),
    "manifest sha256 not hex": (manifest_edit(lambda m: m["shards"][0]["files"].update(
        {"rx-giovi.sigmf-data": "../../etc/passwd"})), "dataset.json", Rule.MANIFEST),
    "receiver listed twice": (manifest_edit(lambda m: m["receivers"].append(m["receivers"][0])),
                              "dataset.json", Rule.MANIFEST),
    "manifest in the wrong folder": (manifest_edit(lambda m: m.update(version=2)), "dataset.json",
                                     Rule.VERSION_FOLDER),
    "manifest missing": (delete_file("dataset.json"), "dataset.json", Rule.MISSING_FILE),
    "listed file missing": (delete_file(data(SHARD1, "genova")), data(SHARD1, "genova"), Rule.MISSING_FILE),
    "sha256 mismatch": (lambda v: flip_byte(v / data(SHARD0, "torino")), data(SHARD0, "torino"), Rule.SHA256),
    "NaN sample": (set_sample(np.nan), data(SHARD0, "milano"), Rule.NON_FINITE),
    "Inf sample": (set_sample(np.inf), data(SHARD0, "milano"), Rule.NON_FINITE),
    "meta not json": (lambda v: (write_text(meta(SHARD0, "genova"), "{")(v), reseal(v, metas=False)),
                      meta(SHARD0, "genova"), Rule.SIGMF),
    "meta breaks the SigMF schema": (meta_edit(SHARD0, "genova", lambda m: m["global"].update(
        {"core:sample_rate": "fast"})), meta(SHARD0, "genova"), Rule.SIGMF),
    "core:sha512 wrong": (meta_edit(SHARD0, "genova", lambda m: m["global"].update({"core:sha512": "0" * 128}),
                                    metas=False), meta(SHARD0, "genova"), Rule.SIGMF_SHA512),
    "collection hash wrong": (lambda v: (edit_json(v / SHARD1 / "shard.sigmf-collection", lambda c: c["collection"][
        "core:streams"][2].update(hash="0" * 128)), reseal(v, metas=False, collections=False)),
        f"{SHARD1}/shard.sigmf-collection", Rule.COLLECTION),
    "datatype": (meta_edit(SHARD0, "giovi", lambda m: m["global"].update({"core:datatype": "ci16_le"})),
                 meta(SHARD0, "giovi"), Rule.DATATYPE),
    "sample rate": (meta_edit(SHARD1, "giovi", lambda m: m["global"].update({"core:sample_rate": 25000.0})),
                    meta(SHARD1, "giovi"), Rule.SAMPLE_RATE),
    "receiver id in meta": (meta_edit(SHARD0, "torino", lambda m: m["global"].update(
        {"heimdall:receiver_id": "milano"})), meta(SHARD0, "torino"), Rule.RECEIVER_ID),
    "receiver missing from receivers": (manifest_edit(lambda m: m["receivers"].pop()), meta(SHARD0, "milano"),
                                        Rule.UNKNOWN_RECEIVER),
    "manifest receiver latitude": (manifest_edit(lambda m: m["receivers"][2].update(latitude=95.0)),
                                   "dataset.json", Rule.COORDINATES),
    "meta geolocation": (meta_edit(SHARD0, "coazze", lambda m: m["global"]["core:geolocation"].update(
        coordinates=[7.2, -91.0, 700.0])), meta(SHARD0, "coazze"), Rule.COORDINATES),
    "emitter longitude": (meta_edit(SHARD1, "genova", emitter_out_of_range), meta(SHARD1, "genova"),
                          Rule.COORDINATES),
    "one recording short of a capture": (meta_edit(SHARD0, "torino", drop_last_session), meta(SHARD0, "torino"),
                                         Rule.CAPTURE_COUNT),
    "shard sessions differ from the recordings": (manifest_edit(fewer_shard_sessions), meta(SHARD0, "giaveno"),
                                                  Rule.CAPTURE_COUNT),
    "annotation sample_count": (meta_edit(SHARD0, "montanaro", lambda m: m["annotations"][5].update(
        {"core:sample_count": S - 1})), meta(SHARD0, "montanaro"), Rule.CAPTURE_LENGTH),
    "capture spacing": (meta_edit(SHARD0, "montanaro", shift_capture), meta(SHARD0, "montanaro"),
                        Rule.CAPTURE_LENGTH),
    "data file size": (truncate_data, data(SHARD0, "giovi"), Rule.CAPTURE_LENGTH),
    "recordings disagree on session ids": (meta_edit(SHARD0, "torino", lambda m: [
        x.update({"heimdall:session_id": "other"}) for x in (m["captures"][4], m["annotations"][4])]),
        meta(SHARD0, "torino"), Rule.SESSION_IDS),
    "capture and annotation disagree": (meta_edit(SHARD0, "torino", lambda m: m["annotations"][4].update(
        {"heimdall:session_id": "other"})), meta(SHARD0, "torino"), Rule.SESSION_IDS),
    "online flag not a bool": (meta_edit(SHARD0, "genova", lambda m: m["annotations"][0].update(
        {"heimdall:online": "yes"})), meta(SHARD0, "genova"), Rule.ONLINE_FLAG),
    "unknown pinned split": (meta_edit(SHARD0, "genova", lambda m: m["annotations"][0].update(
        {"heimdall:split": "holdout"})), meta(SHARD0, "genova"), Rule.PINNED_SPLIT),
    "receivers disagree on the emitter": (meta_edit(SHARD0, "torino", move_emitter), meta(SHARD0, "torino"),
                                          Rule.SESSION_LABELS),
    "session in two shards": (rename_sessions, meta(SHARD1, "giaveno"), Rule.DUPLICATE_SESSION),
    "session total": (manifest_edit(lambda m: m.update(sessions=25)), "dataset.json", Rule.SESSION_COUNT),
    "labelled total": (manifest_edit(lambda m: m.update(labelled_sessions=23)), "dataset.json",
                       Rule.LABELLED_COUNT),
    "shard outside the allowed locations": (move_shard_outside, None, Rule.SHARD_LOCATION),
    "shard path climbs out": (manifest_edit(lambda m: m["shards"][1].update(path="../../elsewhere/000001")),
                              "../../elsewhere/000001", Rule.SHARD_LOCATION),
    "shard on another scheme": (manifest_edit(lambda m: m["shards"][1].update(path="https://x.org/000001")),
                                "https://x.org/000001", Rule.SHARD_LOCATION),
    "unexpected shard file": (manifest_edit(lambda m: m["shards"][0]["files"].update({"notes.txt": "a" * 64})),
                              SHARD0, Rule.SHARD_FILES),
    "collection not listed": (manifest_edit(lambda m: m["shards"][0]["files"].pop("shard.sigmf-collection")),
                              SHARD0, Rule.SHARD_FILES),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_broken_copy_is_refused_naming_dataset_file_and_rule(case, version, cache):
    corrupt, file, rule = REFUSALS[case]
    corrupt(version)
    if file is None:  # the shard's absolute URI, only known once it has moved
        file = load(version / "dataset.json")["shards"][1]["path"]
    with pytest.raises(DatasetError) as refused:
        open_version(version, cache)
    assert (refused.value.dataset, refused.value.file, refused.value.rule) == (DATASET_ID, file, rule)
    assert DATASET_ID in str(refused.value) and file in str(refused.value) and str(rule) in str(refused.value)
    assert cached_files(cache) == []  # nothing half-written, nothing from the refused version


def test_too_few_labelled_sessions_are_refused(version, cache):
    with pytest.raises(DatasetError) as refused:
        open_version(version, cache, min_labelled=25)
    assert (refused.value.dataset, refused.value.file, refused.value.rule) == (
        DATASET_ID, "dataset.json", Rule.TOO_FEW_LABELLED)
    assert cached_files(cache) == []
    assert len(open_version(version, cache, min_labelled=24)) == 24


def test_an_empty_split_is_refused_naming_the_rule_not_left_to_fail_later(version, cache):
    reader = DatasetReader(str(version), cache_dir=cache)
    with pytest.raises(DatasetError) as refused:  # 24 sessions: none hashes into a 1e-6 share
        reader.open(validation_split=1e-6, test_split=0.15, min_labelled_sessions=20)
    assert (refused.value.dataset, refused.value.file, refused.value.rule) == (
        DATASET_ID, "dataset.json", Rule.EMPTY_SPLIT)
    assert "val split" in str(refused.value) and cached_files(cache) == []


def test_absolute_shards_inside_the_root_or_an_allowed_location_are_read(version, cache, tmp_path):
    inside = version.parent / "shared" / "000001"
    shutil.move(version / SHARD1, inside)
    edit_manifest(version, lambda m: m["shards"][1].update(path=inside.as_uri()))
    assert len(open_version(version, cache)) == 24
    allowed = tmp_path / "archive"
    shutil.move(inside, allowed / "000001")
    edit_manifest(version, lambda m: m["shards"][1].update(path=str(allowed / "000001")))
    assert len(open_version(f"{version.as_uri()}/", cache, allowed_locations=[allowed.as_uri()])) == 24


def test_files_fetched_in_parallel_still_name_the_first_refused_in_manifest_order(version, cache):
    """The files of a version download in parallel; when several are broken the error is still
    the first in manifest order, every time, and no staged download outlives the refusal."""
    listed = [f"{SHARD0}/{name}" for name in load(version / "dataset.json")["shards"][0]["files"]]
    first, later = [name for name in listed if name.endswith(".sigmf-data")][:2]
    flip_byte(version / later)
    flip_byte(version / first)
    flip_byte(version / data(SHARD1, "torino"))
    for _ in range(3):
        with pytest.raises(DatasetError) as refused:
            open_version(version, cache)
        assert (refused.value.file, refused.value.rule) == (first, Rule.SHA256)
        assert cached_files(cache) == [] and list((cache / "staging").iterdir()) == []
