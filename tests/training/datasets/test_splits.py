"""The default split (training/datasets/splits.py): blocks sized from the receivers, a buffer that keeps
training away from held-out transmitters, the same split in every version of a lineage, pins
honoured, and the session-id hash where there is no position."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from foundation.settings import Settings
from foundation.train_config import TrainConfig
from training.bench.scenarios import SCENARIOS
from training.card import build_card
from training.datasets.powder import SEVEN_RECEIVERS, blocked_split, load_powder
from training.datasets.reader import DatasetReader
from training.datasets.splits import DatasetSplit, SpatialFrame, assign_split, block_side_m
from training.datasets.synth import SynthConfig, generate_sessions, receivers_for, session_truths
from training.datasets.writer import write_dataset_version
from training.geodesy import haversine_m
from training.pipeline import open_dataset

SHARES = {"validation_split": 0.15, "test_split": 0.15}
CREATED_AT = datetime(2026, 11, 28, tzinfo=timezone.utc)
LINEAGE = SynthConfig(sessions=120, seed=5, samples_per_capture=64, shard_size=100, dataset_id="lineage")


def nearest_m(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[len(points)] metres from each point to the nearest target (inf without targets)."""
    if not len(targets):
        return np.full(len(points), np.inf)
    return haversine_m(points[:, None, 0], points[:, None, 1], targets[None, :, 0], targets[None, :, 1]).min(axis=1)


def assert_held_out_beyond_the_buffer(split: DatasetSplit, latlon: np.ndarray) -> None:
    """Every session a model trains (validates) on lies at least the buffer from every val and test
    (every test) transmitter, buffered ones included."""
    used, placed = ~split.buffered, ~np.isnan(latlon[:, 0])  # sessions without a position are no one's neighbour
    for looser, stricter in (("train", "val"), ("train", "test"), ("val", "test")):
        gap = nearest_m(latlon[placed & used & (split.names == looser)], latlon[placed & (split.names == stricter)])
        assert gap.min() >= split.frame.buffer_m * (1 - 1e-9), (looser, stricter)


def synthetic(cfg: SynthConfig) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(session ids, transmitter lat/lon [N, 2], receivers' lat/lon [R, 2]), drawn without samples."""
    truths = list(session_truths(cfg))
    receivers = np.array([[r.latitude, r.longitude] for r in receivers_for(cfg)])
    return [t.session_id for t in truths], np.array([t.transmitter[:2] for t in truths]), receivers


def powder(variant_receivers=None) -> tuple[list[str], np.ndarray, np.ndarray]:
    data = load_powder()
    data = data if variant_receivers is None else data.select(variant_receivers)
    return data.session_ids, data.tx_latlon, np.array([[r.latitude, r.longitude] for r in data.receivers])


def write_version(root: Path, cfg: SynthConfig, version: int = 1, change=lambda record: record) -> str:
    return write_dataset_version(
        str(root), dataset_id=cfg.dataset_id, version=version, parent_version=version - 1 or None,
        center_frequency_hz=cfg.center_frequency_hz, sample_rate_hz=cfg.sample_rate_hz,
        samples_per_capture=cfg.samples_per_capture, receivers=list(receivers_for(cfg)),
        sessions=(change(record) for record in generate_sessions(cfg)), shard_size=cfg.shard_size,
        created_at=CREATED_AT)


# ---------------------------------------------------------------- the block and the buffer


@pytest.mark.parametrize("source", ["nw-italy-2m", "random-70cm", "powder-all"])
def test_every_held_out_transmitter_is_at_least_the_buffer_from_every_training_one(source):
    ids, latlon, receivers = powder() if source == "powder-all" else \
        synthetic(replace(SCENARIOS[source], sessions=3000))
    frame = SpatialFrame.for_lineage(source, receivers)
    split = frame.split(ids, latlon, [None] * len(ids), **SHARES)

    assert_held_out_beyond_the_buffer(split, latlon)
    assert frame.buffer_m == frame.block_m / 4 > 0
    shares = {name: float(np.mean(split.names == name)) for name in ("train", "val", "test")}
    assert 0.05 < shares["test"] < 0.3 and 0.05 < shares["val"] < 0.3, shares
    left_out = float(np.mean(split.buffered[split.names == "train"]))
    assert 0.1 < left_out < 0.5, left_out  # 34 % on evenly spread positions (module docstring)
    assert not split.buffered[split.names == "test"].any()  # nothing is stricter than test


def test_blocks_are_drawn_in_groups_of_16_so_held_out_blocks_spread_evenly():
    frame = SpatialFrame.for_lineage("groups", np.array([[45.0, 8.0]]))
    east, north = np.meshgrid(np.arange(-40, 40), np.arange(-40, 40))  # 400 groups of 4 x 4 blocks
    blocks = np.stack([east.ravel(), north.ravel()], axis=1)
    codes = frame.block_codes(blocks, **SHARES).reshape(80, 80)
    per_group = codes.reshape(20, 4, 20, 4).transpose(0, 2, 1, 3).reshape(400, 16)
    for code in (1, 2):  # val, test: 0.15 x 16 = 2.4 blocks in every group
        assert set((per_group == code).sum(axis=1)) == {2, 3}
        assert float(np.mean(per_group == code)) == pytest.approx(0.15, abs=0.01)


def test_the_block_fits_the_receivers_extent_and_survives_a_receiver_added_inside():
    assert block_side_m(powder()[2]) == block_side_m(powder(SEVEN_RECEIVERS)[2]) == 200.0
    italy = synthetic(replace(SCENARIOS["nw-italy-2m"], sessions=1))[2]
    assert block_side_m(italy) == 20_000.0 and block_side_m(italy, fraction=0.05) == 10_000.0
    assert block_side_m(synthetic(replace(SCENARIOS["random-70cm"], sessions=1))[2]) == 5_000.0
    assert block_side_m(italy[:1]) == 100.0  # one receiver: no extent, the floor
    inside = np.vstack([italy, italy.mean(axis=0)])
    assert SpatialFrame.for_lineage("x", inside) == SpatialFrame.for_lineage("x", italy)


def test_the_reader_splits_a_labelled_version_by_default_and_takes_the_fractions_from_the_config(tmp_path):
    uri = write_version(tmp_path / "root", replace(LINEAGE, sessions=240))
    data = DatasetReader(uri, cache_dir=tmp_path / "cache").open(**SHARES, min_labelled_sessions=20)
    truths = synthetic(replace(LINEAGE, sessions=240))
    expected = SpatialFrame.for_lineage("lineage", truths[2]).split(truths[0], truths[1], [None] * 240, **SHARES)
    assert np.array_equal(data.splits, expected.names) and np.array_equal(data.split.buffered, expected.buffered)
    train, test = (data.emitter[data.indices(name), :2] for name in ("train", "test"))
    assert nearest_m(train, test).min() >= data.split.frame.buffer_m > 0
    assert all(len(data.indices(name)) >= 10 for name in ("train", "val", "test"))

    config = TrainConfig(spatial_block_fraction=0.05, spatial_buffer_fraction=0.0)
    coarse = open_dataset(Settings(state_dir=tmp_path / "state"), config, uri)
    assert coarse.split.frame.block_m == 10_000.0 and not coarse.split.buffered.any()


def test_the_card_and_mlflow_say_which_split_block_and_buffer(example_dataset, tmp_path):
    data = open_dataset(Settings(state_dir=tmp_path), TrainConfig(), str(example_dataset))
    metrics = dict.fromkeys(("median_error_m", "p90_error_m", "mean_error_m", "coverage_1sigma",
                             "coverage_2sigma", "coverage_95", "nll"), 1.0)
    card = build_card(model_name="m", onnx={}, data=data, config=TrainConfig(), job_id="j", metrics=metrics,
                      parity={}, mlflow_run_id="r", epochs_run=None, best_epoch=None, net_covariance_scale=1.0)
    buffered = int(data.split.buffered.sum())
    assert card["training"]["split"] == {
        "method": "spatial blocks", "block_m": 20_000.0, "buffer_m": 5_000.0, "origin": [45.0, 8.0],
        "pinned_sessions": 0, "buffered_sessions": {name: int((data.split.buffered & (data.splits == name)).sum())
                                                    for name in ("train", "val")}}
    assert sum(card["training"]["sessions"].values()) + buffered == 24
    params = data.split.params()
    assert (params["split_method"], params["split_block_m"], params["split_buffer_m"]) == ("spatial blocks", "20000",
                                                                                           "5000")


# ---------------------------------------------------------------- across versions


def test_a_session_keeps_its_split_when_a_later_version_adds_sessions(tmp_path):
    """v2 of the lineage adds 240 sessions to v1's 120: every v1 session keeps its split and its
    place in or out of the buffer, so no v2 test transmitter lies near anything v1 trained on."""
    v1_uri = write_version(tmp_path / "root", LINEAGE, version=1)
    v2_uri = write_version(tmp_path / "root", replace(LINEAGE, sessions=360), version=2)
    v1, v2 = (DatasetReader(uri, cache_dir=tmp_path / "cache").open(**SHARES, min_labelled_sessions=20)
              for uri in (v1_uri, v2_uri))
    assert list(v2.session_ids[:120]) == list(v1.session_ids)
    assert np.array_equal(v2.splits[:120], v1.splits) and np.array_equal(v2.split.buffered[:120], v1.split.buffered)
    assert v2.split.frame == v1.split.frame
    assert set(v2.splits[120:]) == {"train", "val", "test"}  # the new sessions are split too
    v1_trained = v1.emitter[v1.indices("train"), :2]
    assert nearest_m(v1_trained, v2.emitter[v2.indices("test"), :2]).min() >= v2.split.frame.buffer_m


def test_the_split_of_a_position_does_not_depend_on_the_other_sessions():
    ids, latlon, receivers = synthetic(replace(SCENARIOS["nw-italy-2m"], sessions=2000))
    frame = SpatialFrame.for_lineage("grows", receivers)
    whole = frame.split(ids, latlon, [None] * 2000, **SHARES)
    some = np.random.default_rng(0).permutation(2000)[:300]
    part = frame.split([ids[i] for i in some], latlon[some], [None] * 300, **SHARES)
    assert np.array_equal(part.names, whole.names[some]) and np.array_equal(part.buffered, whole.buffered[some])
    other_lineage = SpatialFrame.for_lineage("another", receivers).split(ids, latlon, [None] * 2000, **SHARES)
    assert not np.array_equal(other_lineage.names, whole.names)  # the dataset id draws the blocks


# ---------------------------------------------------------------- pins and unlabelled sessions


def test_pins_win_over_blocks_and_are_buffered_by_transmitter():
    ids, latlon, receivers = synthetic(replace(SCENARIOS["nw-italy-2m"], sessions=2000))
    frame = SpatialFrame.for_lineage("pinned", receivers)
    free = frame.split(ids, latlon, [None] * 2000, **SHARES)
    flipped = {"train": "test", "val": "train", "test": "train"}
    pins = [flipped[name] if i % 10 == 0 else None for i, name in enumerate(free.names)]
    split = frame.split(ids, latlon, pins, **SHARES)

    pinned = np.array([pin is not None for pin in pins])
    assert list(split.names[pinned]) == [pin for pin in pins if pin is not None] and split.pinned == 200
    assert np.array_equal(split.names[~pinned], free.names[~pinned])  # a pin moves no other session
    assert_held_out_beyond_the_buffer(split, latlon)
    assert split.buffered[~pinned].sum() > free.buffered[~pinned].sum()  # pinned test transmitters push training away


def test_the_powder_importers_pins_are_honoured_and_buffered():
    ids, latlon, receivers = powder()
    pins = blocked_split(latlon)
    split = SpatialFrame.for_lineage("powder-all", receivers).split(ids, latlon, pins, **SHARES)
    assert list(split.names) == pins and split.pinned == len(ids)
    assert_held_out_beyond_the_buffer(split, latlon)
    assert split.facts()["buffered_sessions"]["train"] > 0  # 250 m blocks alone leave near neighbours


def test_sessions_without_a_position_fall_back_to_the_session_hash_without_a_buffer():
    ids, latlon, receivers = synthetic(replace(SCENARIOS["nw-italy-2m"], sessions=600))
    latlon[::3] = np.nan
    split = SpatialFrame.for_lineage("partly", receivers).split(ids, latlon, [None] * 600, **SHARES)
    assert list(split.names[::3]) == [assign_split(session_id, **SHARES) for session_id in ids[::3]]
    assert not split.buffered[::3].any()
    assert_held_out_beyond_the_buffer(split, latlon)


def test_the_reader_splits_an_unlabelled_session_by_its_id_and_honours_a_pin(tmp_path):
    def unlabel_and_pin(record):
        index = int(record.session_id.rpartition("-")[2])
        if index % 4 == 0:
            return replace(record, emitter=None)
        return replace(record, split="test") if index % 4 == 1 else record

    uri = write_version(tmp_path / "root", replace(LINEAGE, sessions=160), change=unlabel_and_pin)
    data = DatasetReader(uri, cache_dir=tmp_path / "cache").open(**SHARES, min_labelled_sessions=20)
    assert list(data.splits[::4]) == [assign_split(sid, **SHARES) for sid in data.session_ids[::4]]
    assert set(data.splits[1::4]) == {"test"} and data.split.pinned == 40
    assert_held_out_beyond_the_buffer(data.split, data.emitter[:, :2])
