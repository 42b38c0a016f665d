"""The synthetic generator: closed-form physics, the generating model it documents, reproducibility."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from training.datasets.channel import (
    distances_m,
    free_space_path_loss_db,
    log_distance_path_loss_db,
    nbfm_capture,
    noise_power_dbm,
    received_power_dbm,
)
from foundation.settings import Settings
from foundation.train_config import TrainConfig
from training.datasets.synth import (
    SynthConfig,
    generate_sessions,
    placement_for,
    receiver_calibration_db,
    session_truths,
    synthesize_dataset,
    transmitter_area,
)
from training.datasets.synth_config import DEFAULT_RECEIVERS
from training.geodesy import haversine_m
from training.pipeline import open_dataset

TINY = SynthConfig(sessions=12, samples_per_capture=64, shard_size=8)
TOWNS = SynthConfig(sessions=2000, towns=4, town_radius_m=3_000.0, uniform_test_share=0.2)
CREATED_AT = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def power_dbm(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.abs(x.astype(np.complex128)) ** 2)))


def test_free_space_loss_at_1_km_on_2_m_band():
    # 4*pi * 1000 m * 145.5e6 Hz / 299_792_458 m/s = 6098.9  ->  20*log10(6098.9) = 75.705 dB
    assert free_space_path_loss_db(1_000.0, 145.5e6) == pytest.approx(75.705, abs=1e-3)


def test_log_distance_loss_adds_10n_db_per_decade_beyond_the_reference():
    # FSPL(1 m) = 75.705 - 60 = 15.705 dB; then 10 * 3 * log10(10_000) = 120 dB
    assert log_distance_path_loss_db(10_000.0, 145.5e6, 3.0) == pytest.approx(135.705, abs=1e-3)
    # from a 100 m reference: FSPL(100 m) = 55.705 dB, plus 30 * log10(100) = 60 dB
    assert log_distance_path_loss_db(10_000.0, 145.5e6, 3.0, reference_m=100.0) == pytest.approx(115.705, abs=1e-3)
    assert log_distance_path_loss_db(0.1, 145.5e6, 3.0) == pytest.approx(15.705, abs=1e-3)  # clamped


def test_received_power_is_a_db_budget():
    assert received_power_dbm(40.0, 120.0, 3.0, -1.0) == pytest.approx(-78.0)


def test_noise_power_scales_with_captured_bandwidth():
    assert noise_power_dbm(-120.0, 12_500.0) == pytest.approx(-120.0)
    assert noise_power_dbm(-120.0, 25_000.0) == pytest.approx(-116.99, abs=0.01)


def test_nbfm_capture_power_is_signal_plus_noise_in_dbm():
    capture = nbfm_capture(-90.0, -100.0, 200_000, 12_500.0, 2_500.0, np.random.default_rng(1))
    assert capture.dtype == np.complex64
    # 1e-9 mW + 1e-10 mW = 1.1e-9 mW -> -89.586 dBm
    assert power_dbm(capture) == pytest.approx(10 * np.log10(1.1e-9), abs=0.2)
    pure_signal = nbfm_capture(-90.0, -np.inf, 1_000, 12_500.0, 2_500.0, np.random.default_rng(2))
    np.testing.assert_allclose(np.abs(pure_signal) ** 2, 1e-9, rtol=1e-5)  # FM: constant envelope


def test_nbfm_occupies_a_narrowband_channel():
    sample_rate_hz = 96_000.0
    signal = nbfm_capture(-60.0, -np.inf, 96_000, sample_rate_hz, 2_500.0, np.random.default_rng(3))
    spectrum = np.abs(np.fft.fft(signal)) ** 2
    frequency_hz = np.fft.fftfreq(signal.size, 1 / sample_rate_hz)
    # Carson: deviation 2.5 kHz + audio 3 kHz, plus a carrier offset up to 0.5 kHz
    assert spectrum[np.abs(frequency_hz) <= 6_500].sum() / spectrum.sum() > 0.99


def test_distances_are_3d():
    torino = DEFAULT_RECEIVERS[2]
    assert distances_m(torino.latitude, torino.longitude, 0.0, [torino])[0] == pytest.approx(250.0)


def test_truth_follows_the_documented_model():
    cfg = SynthConfig(sessions=3000)
    truths = list(session_truths(cfg))
    shadowing_db = np.array([t.shadowing_db for t in truths])
    assert shadowing_db.std() == pytest.approx(cfg.shadowing_sigma_db, abs=0.15)
    assert abs(shadowing_db.mean()) < 0.15
    eirp_dbm = np.array([t.eirp_dbm for t in truths])
    assert cfg.eirp_dbm_min <= eirp_dbm.min() and eirp_dbm.max() <= cfg.eirp_dbm_max
    lat_min, lat_max, lon_min, lon_max = transmitter_area(cfg.receivers, cfg.area_margin_m)
    assert all(lat_min <= t.transmitter[0] <= lat_max and lon_min <= t.transmitter[1] <= lon_max for t in truths)
    online = np.array([t.online for t in truths])
    assert 1 - online.mean() == pytest.approx(cfg.offline_probability, abs=0.01)


def test_calibration_error_is_fixed_per_receiver_and_scales_signal_and_noise():
    cfg = SynthConfig(sessions=50)
    calibration_db = receiver_calibration_db(cfg)
    for truth in session_truths(cfg):
        path_loss_db = log_distance_path_loss_db(
            distances_m(*truth.transmitter, cfg.receivers), cfg.center_frequency_hz, cfg.path_loss_exponent
        )
        budget_dbm = truth.eirp_dbm - path_loss_db + truth.shadowing_db
        np.testing.assert_allclose(truth.signal_dbm - budget_dbm, calibration_db)
        np.testing.assert_allclose(truth.noise_dbm, -120.0 + calibration_db)


def test_captures_carry_the_drawn_power_in_dbm():
    cfg = SynthConfig(sessions=20)
    for truth, record in zip(session_truths(cfg), generate_sessions(cfg)):
        assert record.session_id == truth.session_id and record.emitter == truth.transmitter
        for r in np.flatnonzero(record.online):
            expected_dbm = 10 * np.log10(10 ** (truth.signal_dbm[r] / 10) + 10 ** (truth.noise_dbm[r] / 10))
            assert power_dbm(record.iq[r]) == pytest.approx(expected_dbm, abs=0.5)


def test_offline_receivers_record_zeros_and_someone_is_always_online():
    cfg = SynthConfig(sessions=40, samples_per_capture=64, offline_probability=0.9)
    records = list(generate_sessions(cfg))
    assert all(r.online.any() for r in records)
    assert sum((~r.online).sum() for r in records) > 150
    for record in records:
        assert not record.iq[~record.online].any()
        assert record.iq[record.online].any(axis=1).all()


def test_sessions_are_named_and_spaced_30_s_apart():
    first, second = islice(generate_sessions(TINY), 2)
    assert (first.session_id, second.session_id) == ("synth-nw-italy-0000000", "synth-nw-italy-0000001")
    assert (second.time - first.time).total_seconds() == 30
    assert first.split is None and first.emitter is not None


def version_files(uri: str) -> dict[str, bytes]:
    folder = Path(uri.removeprefix("file://"))
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def shard_hashes(files: dict[str, bytes]) -> list[dict[str, str]]:
    return [shard["files"] for shard in json.loads(files["dataset.json"])["shards"]]


def test_same_config_gives_identical_bytes(tmp_path):
    first = version_files(synthesize_dataset(TINY, str(tmp_path / "a"), created_at=CREATED_AT))
    second = version_files(synthesize_dataset(TINY, str(tmp_path / "b"), created_at=CREATED_AT))
    assert len(first) == 1 + 2 * (2 * 7 + 1)  # manifest + 2 shards of 7 recordings and a collection
    assert first == second
    unstamped = version_files(synthesize_dataset(TINY, str(tmp_path / "c")))
    assert shard_hashes(unstamped) == shard_hashes(first)


def test_another_seed_gives_another_dataset(tmp_path):
    first = version_files(synthesize_dataset(TINY, str(tmp_path / "a"), created_at=CREATED_AT))
    other = version_files(synthesize_dataset(replace(TINY, seed=1), str(tmp_path / "b")))
    assert first["shards/000000/rx-torino.sigmf-data"] != other["shards/000000/rx-torino.sigmf-data"]
    assert shard_hashes(first) != shard_hashes(other)


def test_the_default_config_still_draws_what_it_always_drew():
    # pinned before layouts and static fields were added: new options must not move a default stream
    truth = next(session_truths(SynthConfig()))
    assert truth.transmitter == pytest.approx((45.49887424549162, 7.9917459283982755, 2.0), abs=1e-12)
    assert truth.eirp_dbm == pytest.approx(39.297961669424254, abs=1e-12)
    np.testing.assert_allclose(truth.shadowing_db[:3], [-0.6154621047560662, -9.845181567152022, 0.2737496783194089],
                               atol=1e-12)
    np.testing.assert_allclose(truth.signal_dbm[:2], [-120.7080412732084, -122.90164172811365], atol=1e-9)
    assert truth.online.all() and not truth.static_shadowing_db.any()


# ---------------------------------------------------------------- towns: trained on clusters, tested everywhere


def distances_to_towns_m(cfg: SynthConfig, truths) -> np.ndarray:
    """[N, T] metres from each session's transmitter to each town centre."""
    centres = placement_for(cfg).town_centres
    latlon = np.array([t.transmitter[:2] for t in truths])
    return haversine_m(latlon[:, None, 0], latlon[:, None, 1], centres[None, :, 0], centres[None, :, 1])


def test_town_settings_without_towns_draw_what_the_default_draws():
    # towns = 0 must not consume a draw: every dataset made before towns keeps its bytes
    # (test_the_default_config_still_draws_what_it_always_drew pins the values themselves)
    default = list(session_truths(SynthConfig(sessions=30)))
    ignored = list(session_truths(SynthConfig(sessions=30, town_radius_m=1_000.0, uniform_test_share=0.5)))
    assert [(t.transmitter, t.eirp_dbm, t.signal_dbm.tobytes(), t.online.tobytes()) for t in ignored] == \
        [(t.transmitter, t.eirp_dbm, t.signal_dbm.tobytes(), t.online.tobytes()) for t in default]
    assert {t.split for t in default} == {None} and placement_for(SynthConfig()).town_centres.shape == (0, 2)


def test_towns_are_drawn_from_the_seed_inside_the_area():
    centres = placement_for(TOWNS).town_centres
    lat_min, lat_max, lon_min, lon_max = transmitter_area(TOWNS.receivers, TOWNS.area_margin_m)
    assert centres.shape == (4, 2)
    assert np.all((lat_min <= centres[:, 0]) & (centres[:, 0] <= lat_max))
    assert np.all((lon_min <= centres[:, 1]) & (centres[:, 1] <= lon_max))
    np.testing.assert_array_equal(placement_for(TOWNS).town_centres, centres)
    assert not np.array_equal(placement_for(replace(TOWNS, seed=1)).town_centres, centres)


def test_clustered_transmitters_lie_within_a_few_radii_of_a_town_and_uniform_ones_do_not():
    truths = list(session_truths(TOWNS))
    nearest_m = distances_to_towns_m(TOWNS, truths).min(axis=1)
    clustered = np.array([t.split != "test" for t in truths])
    radius_m = TOWNS.town_radius_m
    # a 2-D Gaussian's distance is Rayleigh: median sigma * sqrt(2 ln 2) = 1.18 sigma, 1e-3 beyond 3.72 sigma
    assert np.median(nearest_m[clustered]) == pytest.approx(1.18 * radius_m, rel=0.1)
    assert np.mean(nearest_m[clustered] > 3.72 * radius_m) < 0.005
    assert np.median(nearest_m[~clustered]) > 5 * radius_m  # spread over a 140 x 170 km area, not the towns


def test_the_uniform_share_is_pinned_to_test_the_last_town_to_val_the_others_to_train():
    truths = list(session_truths(TOWNS))
    splits = np.array([t.split for t in truths])
    # 2000 draws: the shares' standard deviations are about 0.009
    assert np.mean(splits == "test") == pytest.approx(TOWNS.uniform_test_share, abs=0.03)
    assert np.mean(splits == "val") == pytest.approx((1 - TOWNS.uniform_test_share) / TOWNS.towns, abs=0.03)
    assert set(splits) == {"train", "val", "test"}
    own_town = distances_to_towns_m(TOWNS, truths).argmin(axis=1)
    assert np.mean(own_town[splits == "val"] == TOWNS.towns - 1) > 0.98  # nearest: the towns lie far apart
    assert not np.any(own_town[splits == "train"] == TOWNS.towns - 1)
    assert [r.split for r in generate_sessions(replace(TOWNS, sessions=20))] == list(splits[:20])


def test_the_service_split_holds_out_exactly_the_uniform_sessions(tmp_path):
    cfg = replace(TOWNS, sessions=400, samples_per_capture=64, dataset_id="towns")
    pins = np.array([t.split for t in session_truths(cfg)])
    data = open_dataset(Settings(state_dir=tmp_path / "state"), TrainConfig(),
                        synthesize_dataset(cfg, str(tmp_path / "root")))
    assert list(data.splits) == list(pins) and data.split.pinned == 400  # the pins reach the reader and win
    np.testing.assert_array_equal(data.indices("test"), np.flatnonzero(pins == "test"))  # a test session is never buffered
    assert 0 < len(data.indices("val")) and 0 < len(data.indices("train")) < (pins == "train").sum()


def test_misconfigured_towns_are_refused():
    for bad in ({"towns": 1}, {"towns": -2}, {"town_radius_m": 0.0}, {"uniform_test_share": 1.0},
                {"uniform_test_share": 0.0}):
        with pytest.raises(ValueError, match="towns 0 \\(uniform\\) or >= 2"):
            SynthConfig(**bad)
