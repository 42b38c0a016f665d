"""Classical baselines on synthetic log-distance sessions generated here, independently."""

from __future__ import annotations

import numpy as np
import pytest

from training.baselines.power import capture_power_dbm, heard_mask, weighted_centroid
from training.baselines.grid_search import ml_grid_search
from training.path_loss import fit_path_loss
from training.geodesy import from_local_en, haversine_m
from training.metrics import localization_errors_m
from training.plots import plot_results

NOISE_DBM = -120.0  # 12.5 kHz capture
ORIGIN = (45.0, 8.0)
# Seven receivers: a hexagon of radius 35 km around a central one.
_ANGLES = np.radians(np.arange(6) * 60.0 + 15.0)
LAYOUT_EN_M = np.vstack([[0.0, 0.0], 35_000.0 * np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], -1)])


def _receivers() -> np.ndarray:
    lat, lon = from_local_en(LAYOUT_EN_M[:, 0], LAYOUT_EN_M[:, 1], *ORIGIN)
    return np.stack([lat, lon, np.full(lat.shape, 300.0)], axis=-1)


def _sessions(n, *, shadowing_db, intercept_dbm=(20.0, 35.0), exponent=3.0, seed=0,
              offline_fraction=0.0, offsets_db=0.0):
    """Total powers (signal + noise, dBm) from P = A + offset_r − 10·n·log10(d) + shadowing."""
    rng = np.random.default_rng(seed)
    rx = _receivers()
    east, north = rng.uniform(-40_000, 40_000, (2, n))
    lat, lon = from_local_en(east, north, *ORIGIN)
    dist = haversine_m(lat[:, None], lon[:, None], rx[None, :, 0], rx[None, :, 1])
    eirp = rng.uniform(*intercept_dbm, (n, 1))  # unknown per session
    signal = eirp + offsets_db - 10 * exponent * np.log10(dist) + shadowing_db * rng.standard_normal(dist.shape)
    total = 10 * np.log10(10 ** (signal / 10) + 10 ** (NOISE_DBM / 10))
    online = rng.random(total.shape) >= offline_fraction
    return np.where(online, total, -np.inf), rx, online, np.stack([lat, lon], axis=-1)


def test_capture_power_is_dbm_of_mean_square_and_offline_zeros_are_minus_inf():
    iq = np.zeros((1, 2, 100, 2), dtype=np.float32)
    iq[0, 0, :, 0] = np.sqrt(1e-11)  # 1e-11 mW = −110 dBm
    power = capture_power_dbm(iq)
    assert power.dtype == np.float64
    assert power[0, 0] == pytest.approx(-110.0, abs=1e-4)
    assert power[0, 1] == -np.inf


def test_weighted_centroid_lands_on_the_only_receiver_that_hears():
    rx = _receivers()
    power = np.full((1, 7), NOISE_DBM)
    power[0, 4] = -90.0
    pred = weighted_centroid(power, rx, np.ones((1, 7), bool), noise_floor_dbm=NOISE_DBM)
    np.testing.assert_allclose(pred[0], rx[4, :2])


def test_weighted_centroid_is_the_plain_centroid_of_online_receivers_when_nobody_hears():
    rx = _receivers()
    online = np.array([[True, True, False, True, False, True, True]])
    pred = weighted_centroid(np.full((1, 7), NOISE_DBM), rx, online, noise_floor_dbm=NOISE_DBM)
    np.testing.assert_allclose(pred[0], rx[online[0], :2].mean(axis=0))


def test_weighted_centroid_ignores_offline_receivers_whatever_their_power():
    rx = _receivers()
    power = np.full((1, 7), NOISE_DBM)
    power[0, 1], power[0, 2] = -95.0, -40.0
    online = np.ones((1, 7), bool)
    online[0, 2] = False
    pred = weighted_centroid(power, rx, online, noise_floor_dbm=NOISE_DBM)
    np.testing.assert_allclose(pred[0], rx[1, :2])


def test_fit_path_loss_recovers_the_exponent_with_unknown_eirp():
    power, rx, online, true = _sessions(400, shadowing_db=2.0, intercept_dbm=(30.0, 45.0), seed=1)
    fit = fit_path_loss(power, rx, online, true, NOISE_DBM)
    assert fit.exponent == pytest.approx(3.0, abs=0.1)
    assert fit.residual_sigma_db == pytest.approx(2.0, abs=0.3)


def test_censored_fit_recovers_exponent_sigma_and_offsets_when_half_the_receivers_are_not_heard():
    """n = 3.0, σ = 6 dB, offsets of up to ±4 dB, about half the receivers below the floor: the
    regime where a heard-only fit came out near n = 2.3. Tolerances: n ± 0.15, σ ± 0.6 dB,
    each offset ± 1 dB (1,500 sessions; the fitted n was 3.06 on seed 7 when written)."""
    offsets = np.array([-4.0, -2.0, 0.0, 1.0, 2.0, 3.0, 0.0])
    offsets -= offsets.mean()
    power, rx, online, true = _sessions(1500, shadowing_db=6.0, intercept_dbm=(10.0, 25.0), seed=7,
                                        offline_fraction=0.05, offsets_db=offsets)
    heard = heard_mask(power, online, NOISE_DBM)
    assert 0.35 < heard.sum() / online.sum() < 0.65  # the censoring is real
    fit = fit_path_loss(power, rx, online, true, NOISE_DBM)
    assert fit.exponent == pytest.approx(3.0, abs=0.15)
    assert fit.residual_sigma_db == pytest.approx(6.0, abs=0.6)
    np.testing.assert_allclose(fit.calibration_db, offsets, atol=1.0)
    assert fit.censored_used > 0.3 * online.sum()


def test_the_channel_fit_runs_its_optimizer_on_one_blas_thread(monkeypatch):
    """Thousands of tiny BLAS calls: OpenBLAS's thread pool made the fit 5x slower on 2 busy cores."""
    from threadpoolctl import threadpool_info

    from training import path_loss

    threads, real_nll = set(), path_loss._Tobit.nll
    monkeypatch.setattr(path_loss._Tobit, "nll", lambda self, x: threads.update(
        pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas") or real_nll(self, x))
    power, rx, online, true = _sessions(200, shadowing_db=2.0, intercept_dbm=(30.0, 45.0), seed=1)
    fit_path_loss(power, rx, online, true, NOISE_DBM)
    assert threads == {1}


def test_fit_path_loss_refuses_sessions_that_say_nothing_about_the_exponent():
    power, rx, online, true = _sessions(5, shadowing_db=0.0, intercept_dbm=(-60.0, -60.0))
    with pytest.raises(ValueError):
        fit_path_loss(power, rx, online, true, NOISE_DBM)


def test_ml_grid_search_subtracts_each_receivers_calibration_offset():
    """Noiseless powers with offsets of ±6 dB: told the offsets (and σ = 1 dB, near the truth),
    ML lands on the transmitter; blind to them, it misses by kilometres."""
    offsets = np.array([6.0, -6.0, 6.0, -6.0, 6.0, -6.0, 0.0])
    power, rx, online, true = _sessions(30, shadowing_db=0.0, intercept_dbm=(30.0, 40.0), seed=5,
                                        offsets_db=offsets)
    told = ml_grid_search(power, rx, online, exponent=3.0, noise_floor_dbm=NOISE_DBM, calibration_db=offsets,
                          sigma_db=1.0)
    blind = ml_grid_search(power, rx, online, exponent=3.0, noise_floor_dbm=NOISE_DBM, sigma_db=1.0)
    assert localization_errors_m(told, true).max() < 1_500.0
    assert np.median(localization_errors_m(blind, true)) > 3_000.0


def test_ml_grid_search_finds_the_transmitter_with_noiseless_powers():
    power, rx, online, true = _sessions(30, shadowing_db=0.0, intercept_dbm=(30.0, 40.0), seed=2)
    pred = ml_grid_search(power, rx, online, exponent=3.0, noise_floor_dbm=NOISE_DBM)
    assert localization_errors_m(pred, true).max() < 1_500.0


def test_ml_grid_search_beats_weighted_centroid_under_6_db_shadowing():
    power, rx, online, true = _sessions(200, shadowing_db=6.0, seed=3, offline_fraction=0.1)
    ml = ml_grid_search(power, rx, online, exponent=3.0, noise_floor_dbm=NOISE_DBM, sigma_db=6.0)
    wc = weighted_centroid(power, rx, online, noise_floor_dbm=NOISE_DBM)
    ml_median = np.median(localization_errors_m(ml, true))
    assert ml_median < np.median(localization_errors_m(wc, true))
    assert ml_median < 20_000.0  # the physical 10–20 km regime, not tens of metres


def test_plot_results_writes_a_png(tmp_path):
    power, rx, online, true = _sessions(60, shadowing_db=6.0, seed=4)
    ml = ml_grid_search(power, rx, online, exponent=3.0, noise_floor_dbm=NOISE_DBM)
    wc = weighted_centroid(power, rx, online, noise_floor_dbm=NOISE_DBM)
    cov = np.broadcast_to(np.array([[9e7, 2e7], [2e7, 4e7]]), (60, 2, 2))
    path = plot_results(tmp_path / "plots" / "results.png", receivers_latlon=rx[:, :2],
                        true_latlon=true, pred_latlon=ml, cov_m2=cov,
                        errors_by_method={"ml grid": localization_errors_m(ml, true),
                                          "weighted centroid": localization_errors_m(wc, true)},
                        title="synthetic")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_the_censored_fit_converges_on_thousands_of_generated_sessions(tmp_path):
    """2,400 sessions from the project's own generator (seven receivers, unknown EIRPs): in its
    natural variables L-BFGS-B stopped at its 2,000-iteration cap, short of the optimum (n 2.40
    where the optimum was 2.34, on 3,000 sessions); preconditioned, it converges."""
    from training.datasets.reader import DatasetReader
    from training.datasets.synth import SynthConfig, synthesize_dataset
    from training.evaluation import _labelled_powers, noise_floor_dbm

    uri = synthesize_dataset(SynthConfig(sessions=2400, seed=7, samples_per_capture=64, shard_size=1200,
                                         dataset_id="fit-converges"), str(tmp_path / "root"))
    data = DatasetReader(uri, cache_dir=tmp_path / "cache").open(validation_split=0.1, test_split=0.1,
                                                                 min_labelled_sessions=20)
    power, online, true = _labelled_powers(data, "train")
    fit = fit_path_loss(power, data.rx_position, online, true, noise_floor_dbm(data.manifest.sample_rate_hz))
    assert fit.converged
