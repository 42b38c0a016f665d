"""The POWDER importer keeps every session's power, position and split (training/datasets/powder.py)."""

from __future__ import annotations

import csv
import shutil
from collections import Counter

import numpy as np
import pytest

from training.baselines.power import capture_power_dbm
from training.datasets.reader import DatasetReader
from training.datasets.powder import (
    COORDS_FILE, CSV_FILE, GROUND_ALTITUDE_M, HANDHELD_HEIGHT_M, NOT_HEARD_DB, POWDER_DIR, SEVEN_RECEIVERS,
    blocked_split, import_powder, load_powder, spatial_blocks,
)

SHARES = {"val": 0.15, "test": 0.15}


@pytest.fixture(scope="module")
def powder_csv() -> dict:
    """The CSV read here, independently of the importer: row -> (timestamp, rss by name, tx)."""
    with open(POWDER_DIR / CSV_FILE, newline="") as stream:
        rows = list(csv.DictReader(stream))
    return {f"powder-{i:05d}": row for i, row in enumerate(rows)
            if float(row["tx_x_coord"]) not in (-1.0, 0.0) and float(row["tx_y_coord"]) not in (-1.0, 0.0)}


@pytest.fixture(scope="module", params=["all", "seven"])
def imported(request, tmp_path_factory):
    """(variant, VerifiedDataset) of one variant, imported and read back through the real reader."""
    root = tmp_path_factory.mktemp(f"powder-{request.param}")
    uri = import_powder(str(root / "datasets"), variant=request.param)
    dataset = DatasetReader(uri, cache_dir=root / "cache").open(
        validation_split=SHARES["val"], test_split=SHARES["test"], min_labelled_sessions=20)
    return request.param, dataset


def test_every_session_keeps_its_power_position_and_split(imported, powder_csv):
    variant, dataset = imported
    assert len(dataset) == len(powder_csv) == dataset.manifest.labelled_sessions
    ids = [r.id for r in dataset.receivers]
    rows = [powder_csv[session_id] for session_id in dataset.session_ids]
    rss = np.array([[float(row[rid]) for rid in ids] for row in rows])
    tx = np.array([[float(row["tx_x_coord"]), float(row["tx_y_coord"])] for row in rows])
    power = capture_power_dbm(dataset.read_many(np.arange(len(dataset)))[0])

    online = dataset.online
    np.testing.assert_allclose(power[online], rss[online], atol=1e-3)  # −101 too: noise at the floor
    assert (rss[~online] == NOT_HEARD_DB).all() and np.isneginf(power[~online]).all()  # offline: zeros
    np.testing.assert_allclose(dataset.emitter[:, :2], tx, rtol=0, atol=1e-9)
    np.testing.assert_allclose(dataset.emitter[:, 2], GROUND_ALTITUDE_M + HANDHELD_HEIGHT_M)
    expected_split = dict(zip(powder_csv, blocked_split(
        np.array([[float(r["tx_x_coord"]), float(r["tx_y_coord"])] for r in powder_csv.values()]))))
    assert list(dataset.splits) == [expected_split[session_id] for session_id in dataset.session_ids]


def test_a_receiver_is_offline_exactly_on_the_days_it_reported_nothing(imported, powder_csv):
    _, dataset = imported
    days = np.array([powder_csv[session_id]["timestamp"][:10] for session_id in dataset.session_ids])
    for day in np.unique(days):
        for column, receiver in enumerate(dataset.receivers):
            today = days == day
            heard_today = any(float(powder_csv[s][receiver.id]) != NOT_HEARD_DB for s in dataset.session_ids[today])
            assert set(dataset.online[today, column]) == {heard_today}, (day, receiver.id)


def test_variants_hold_fixed_receivers_only(imported):
    variant, dataset = imported
    ids = [r.id for r in dataset.receivers]
    assert not any(rid.startswith("bus-") for rid in ids)
    if variant == "seven":
        assert ids == list(SEVEN_RECEIVERS) and len(ids) == 7
    else:
        assert len(ids) == 29
    assert {r.altitude_m for r in dataset.receivers} == {GROUND_ALTITUDE_M}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blocked_split_keeps_each_block_in_one_split_with_roughly_the_requested_shares(seed):
    tx = load_powder().tx_latlon
    splits = np.array(blocked_split(tx, block_m=250, seed=seed))
    blocks = spatial_blocks(tx, block_m=250)
    split_of_block: dict[tuple, set] = {}
    for block, split in zip(map(tuple, blocks), splits):
        split_of_block.setdefault(block, set()).add(split)
    assert all(len(found) == 1 for found in split_of_block.values())
    shares = {name: count / len(tx) for name, count in Counter(splits).items()}
    assert shares["val"] == pytest.approx(SHARES["val"], abs=0.05)
    assert shares["test"] == pytest.approx(SHARES["test"], abs=0.05)
    # Blocks are 250 m squares on a local metric frame: positions in one block are that close.
    for block in list(split_of_block)[:20]:
        inside = tx[(blocks == block).all(axis=1)]
        assert np.ptp(inside[:, 0]) * 111_195 <= 250 + 1e-6


def test_sessions_without_a_transmitter_position_are_dropped_and_keep_their_row_ids(tmp_path):
    with open(POWDER_DIR / CSV_FILE, newline="") as stream:
        header, *rows = list(csv.reader(stream))
    rows = rows[:4]
    rows[1][header.index("tx_x_coord")] = rows[1][header.index("tx_y_coord")] = "-1"
    rows[2][header.index("tx_x_coord")] = "nan"
    with open(tmp_path / CSV_FILE, "w", newline="") as stream:
        csv.writer(stream).writerows([header, *rows])
    shutil.copy(POWDER_DIR / COORDS_FILE, tmp_path / COORDS_FILE)
    data = load_powder(tmp_path / CSV_FILE, tmp_path / COORDS_FILE)
    assert data.session_ids == ["powder-00000", "powder-00003"]
    assert all(moment.tzinfo is not None for moment in data.times)
    assert "bus-6186" in data.mobile_receivers


def test_an_unknown_variant_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        import_powder(str(tmp_path), variant="eight")
    assert not any(tmp_path.iterdir())
