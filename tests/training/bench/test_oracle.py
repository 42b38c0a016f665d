"""The Bayesian oracle is the exact posterior of the generating model; the CRB its local bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from training.baselines.power import capture_power_dbm, weighted_centroid
from training.geodesy import EARTH_RADIUS_M, from_local_en, haversine_m
from training.metrics import mahalanobis_sq
from training.bench.oracle import ChannelModel, crb_m, eirp_nodes_dbm, oracle_metrics, oracle_posterior
from training.bench.scenarios import scenario
from training.datasets.channel import distances_m
from training.datasets.synth import (
    antenna_patterns,
    SynthConfig,
    generate_sessions,
    receiver_calibration_db,
    receivers_for,
    session_truths,
    transmitter_area,
)

ORIGIN = (45.0, 8.0)
FREQUENCY_HZ = 145.5e6
C_M_S = 299_792_458.0
SIGMA_DB = 6.0
EXPONENT = 3.0
TX_ALTITUDE_M = 2.0
# Two receivers south-west and north-east of a 3 × 1 km strip of three 1 km cells.
RX_EN_M = np.array([[-20_000.0, -5_000.0], [30_000.0, 8_000.0]])
CALIBRATION_DB = np.array([1.5, -0.5])


def tiny_model(*, eirp=(37.0, 37.0), noise_dbm=-250.0) -> ChannelModel:
    lat, lon = from_local_en(RX_EN_M[:, 0], RX_EN_M[:, 1], *ORIGIN)
    return ChannelModel(
        frequency_hz=FREQUENCY_HZ, path_loss_exponent=EXPONENT, shadowing_sigma_db=SIGMA_DB,
        eirp_dbm_min=eirp[0], eirp_dbm_max=eirp[1], noise_dbm=noise_dbm, calibration_db=CALIBRATION_DB,
        rx_position=np.stack([lat, lon, np.full(2, TX_ALTITUDE_M)], axis=-1), tx_altitude_m=TX_ALTITUDE_M)


def strip_area() -> tuple[float, float, float, float]:
    """Three 1 km cells in a row: 3 km east-west by 1 km north-south around ORIGIN."""
    half_lat = math.degrees(500.0 / EARTH_RADIUS_M)
    half_lon = math.degrees(1500.0 / (EARTH_RADIUS_M * math.cos(math.radians(ORIGIN[0]))))
    return ORIGIN[0] - half_lat, ORIGIN[0] + half_lat, ORIGIN[1] - half_lon, ORIGIN[1] + half_lon


def cell_centres() -> tuple[np.ndarray, np.ndarray]:
    """The three cells' centres, 1 km apart along the east axis."""
    return from_local_en(np.array([-1000.0, 0.0, 1000.0]), np.zeros(3), *ORIGIN)


def mean_signal_dbm(eirp_dbm: float) -> np.ndarray:
    """[3 cells, 2 receivers] EIRP − FSPL(1 m) − 10·n·log10(d) + calibration, written out."""
    lat, lon = cell_centres()
    rx_lat, rx_lon = from_local_en(RX_EN_M[:, 0], RX_EN_M[:, 1], *ORIGIN)
    d = haversine_m(lat[:, None], lon[:, None], rx_lat[None], rx_lon[None])  # same altitude: 3-D = ground
    fspl_1m = 20.0 * math.log10(4.0 * math.pi * FREQUENCY_HZ / C_M_S)
    return eirp_dbm - fspl_1m - 10.0 * EXPONENT * np.log10(d) + CALIBRATION_DB


def posterior(power_dbm, model, online=(True, True), **kwargs):
    return oracle_posterior(np.array([power_dbm]), np.array([online]), model, area=strip_area(),
                            grid_step_m=1000.0, posterior_dtype=np.float64, **kwargs)


def test_known_eirp_posterior_is_the_normalised_product_of_gaussian_densities():
    power = np.array([-75.0, -90.0])  # 160 dB above a −250 dBm floor: the signal is the power
    result = posterior(power, tiny_model())
    assert result.grid.shape == (1, 3)
    likelihood = norm.pdf(power, loc=mean_signal_dbm(37.0), scale=SIGMA_DB).prod(axis=1)
    expected = likelihood / likelihood.sum()
    np.testing.assert_allclose(np.exp(result.log_prob[0, 0]), expected, rtol=1e-9)
    # evidence: uniform prior 1/3 per cell, Jacobian 1 this far above the noise
    assert result.log_evidence[0] == pytest.approx(math.log(likelihood.sum() / 3.0), rel=1e-9)
    lat, lon = cell_centres()
    np.testing.assert_allclose(result.mean_latlon[0], [expected @ lat, expected @ lon], rtol=1e-12)


def test_posterior_covariance_is_the_cell_spread_plus_the_within_cell_variance():
    result = posterior(np.array([-75.0, -90.0]), tiny_model())
    p = np.exp(result.log_prob[0, 0])
    east = np.array([-1000.0, 0.0, 1000.0])
    var_east = p @ (east - p @ east) ** 2 + 1000.0**2 / 12.0
    assert result.cov_m2[0, 0, 0] == pytest.approx(var_east, rel=1e-6)  # frame at the mean vs at ORIGIN
    assert result.cov_m2[0, 1, 1] == pytest.approx(1000.0**2 / 12.0, rel=1e-9)


def test_a_receiver_below_the_noise_is_censored():
    model = tiny_model(noise_dbm=-120.0)
    noise = -120.0 + CALIBRATION_DB
    power = np.array([-100.0, noise[1]])  # receiver 1 hears only its own noise
    result = posterior(power, model, censor_margin_db=1.0)
    signal_0 = 10.0 * math.log10(10.0 ** (power[0] / 10.0) - 10.0 ** (noise[0] / 10.0))
    threshold_1 = noise[1] + 10.0 * math.log10(10.0**0.1 - 1.0)  # the signal that makes P = N + 1 dB
    mu = mean_signal_dbm(37.0)
    likelihood = norm.pdf(signal_0, mu[:, 0], SIGMA_DB) * norm.cdf(threshold_1, mu[:, 1], SIGMA_DB)
    np.testing.assert_allclose(np.exp(result.log_prob[0, 0]), likelihood / likelihood.sum(), rtol=1e-9)
    # The density of P, not of s: dP → ds stretches by 10^(P/10) / (10^(P/10) − 10^(N/10)).
    jacobian = 10.0 ** (power[0] / 10.0) / (10.0 ** (power[0] / 10.0) - 10.0 ** (noise[0] / 10.0))
    assert result.log_evidence[0] == pytest.approx(math.log(jacobian * likelihood.sum() / 3.0), rel=1e-9)


def test_unknown_eirp_is_marginalised_with_the_midpoint_rule():
    model = tiny_model(eirp=(30.0, 36.0))
    np.testing.assert_allclose(eirp_nodes_dbm(model, 3), [31.0, 33.0, 35.0])
    power = np.array([-75.0, -95.0])
    result = posterior(power, model, eirp_steps=3)
    likelihood = sum(norm.pdf(power, mean_signal_dbm(e), SIGMA_DB).prod(axis=1) for e in (31.0, 33.0, 35.0))
    np.testing.assert_allclose(np.exp(result.log_prob[0, 0]), likelihood / likelihood.sum(), rtol=1e-9)


def test_offline_receivers_contribute_nothing_whatever_they_report():
    model = tiny_model()
    power = np.array([-75.0, np.nan])
    result = posterior(power, model, online=(True, False))
    likelihood = norm.pdf(power[0], mean_signal_dbm(37.0)[:, 0], SIGMA_DB)
    np.testing.assert_allclose(np.exp(result.log_prob[0, 0]), likelihood / likelihood.sum(), rtol=1e-9)


def test_the_model_from_a_synth_config_is_the_one_that_generated_its_sessions():
    cfg = SynthConfig(sessions=5, seed=7)
    model = ChannelModel.from_synth(cfg)
    np.testing.assert_array_equal(model.calibration_db, receiver_calibration_db(cfg))
    for truth in session_truths(cfg):
        mean = model.mean_offset_db(*truth.transmitter[:2]) + truth.eirp_dbm
        np.testing.assert_allclose(truth.signal_dbm - truth.shadowing_db, mean, atol=1e-9)
        np.testing.assert_allclose(truth.noise_dbm, model.receiver_noise_dbm)


def test_an_oracle_that_knows_the_static_field_faces_only_the_iid_shadowing():
    cfg = SynthConfig(sessions=5, seed=7, shadowing_sigma_db=4.0, static_shadowing_sigma_db=4.0)
    assert ChannelModel.from_synth(cfg).shadowing_sigma_db == pytest.approx(math.hypot(4.0, 4.0))
    model = ChannelModel.from_synth(cfg, knows_static_field=True)
    assert model.shadowing_sigma_db == 4.0
    for truth in session_truths(cfg):
        mean = model.mean_offset_db(*truth.transmitter[:2]) + truth.eirp_dbm
        np.testing.assert_allclose(truth.signal_dbm - truth.shadowing_db, mean, atol=1e-9)


def test_directional_receivers_hear_their_front_12_db_louder_and_the_oracle_knows_the_patterns():
    cfg = scenario("directional", sessions=400)
    truths = list(session_truths(cfg))
    gain = np.array([t.antenna_gain_db for t in truths])
    assert gain.max() == pytest.approx(6.0, abs=0.1) and gain.min() == pytest.approx(-6.0, abs=0.1)
    boresight = antenna_patterns(cfg).boresight_rad
    rx = receivers_for(cfg)
    for r, receiver in enumerate(rx):  # a transmitter 20 km along the boresight, and 20 km behind
        ahead = from_local_en(20_000 * np.sin(boresight[r]), 20_000 * np.cos(boresight[r]), receiver.latitude,
                              receiver.longitude)
        behind = from_local_en(-20_000 * np.sin(boresight[r]), -20_000 * np.cos(boresight[r]), receiver.latitude,
                               receiver.longitude)
        assert antenna_patterns(cfg)(*ahead)[r] - antenna_patterns(cfg)(*behind)[r] == pytest.approx(12.0, abs=1e-6)
    model = ChannelModel.from_synth(cfg)
    for truth in truths[:20]:
        mean = model.mean_offset_db(*truth.transmitter[:2]) + truth.eirp_dbm
        np.testing.assert_allclose(truth.signal_dbm - truth.shadowing_db, mean, atol=1e-9)
    assert not np.array([t.antenna_gain_db for t in session_truths(SynthConfig(sessions=20))]).any()


@pytest.fixture(scope="module")
def synthetic_sessions():
    """100 sessions of the default 2 m network with their captured powers and truth."""
    cfg = SynthConfig(sessions=100, seed=11)
    records = list(generate_sessions(cfg))
    iq = np.stack([r.iq for r in records])
    power = capture_power_dbm(np.stack([iq.real, iq.imag], axis=-1))
    online = np.stack([r.online for r in records])
    true = np.array([r.emitter[:2] for r in records])
    return cfg, power, online, true


def test_oracle_beats_the_centroid_and_its_posterior_is_calibrated(synthetic_sessions):
    cfg, power, online, true = synthetic_sessions
    model = ChannelModel.from_synth(cfg)
    result = oracle_posterior(power, online, model, area=transmitter_area(receivers_for(cfg), cfg.area_margin_m))
    centroid = weighted_centroid(power, model.rx_position, online, noise_floor_dbm=model.noise_dbm)
    centroid_median_m = np.median(haversine_m(*centroid.T, *true.T))
    metrics = oracle_metrics(result, true, crb_m=crb_m(true, online, model))
    assert metrics["median_error_m"] < 0.85 * centroid_median_m
    two_sigma = np.mean(mahalanobis_sq(result.mean_latlon, result.cov_m2, true) <= 4.0)
    assert two_sigma == pytest.approx(0.865, abs=0.1)
    # Exactness in full: the truth's highest-density level is uniform on [0, 1].
    level = result.credible_level(true)
    assert np.mean(level <= 0.5) == pytest.approx(0.5, abs=0.15)
    assert np.mean(level <= 0.9) == pytest.approx(0.9, abs=0.08)
    assert np.isfinite(metrics["nll"]) and metrics["crb_median_m"] > 0


def circle_layout(count: int, radius_m: float, start_deg: float = 0.0) -> np.ndarray:
    angles = np.radians(start_deg + 360.0 * np.arange(count) / count)
    lat, lon = from_local_en(radius_m * np.cos(angles), radius_m * np.sin(angles), *ORIGIN)
    return np.stack([lat, lon, np.full(count, TX_ALTITUDE_M)], axis=-1)


def crb_model(rx_position: np.ndarray) -> ChannelModel:
    return ChannelModel(frequency_hz=FREQUENCY_HZ, path_loss_exponent=EXPONENT, shadowing_sigma_db=SIGMA_DB,
                        eirp_dbm_min=30.0, eirp_dbm_max=44.0, noise_dbm=-120.0,
                        calibration_db=np.zeros(len(rx_position)), rx_position=rx_position,
                        tx_altitude_m=TX_ALTITUDE_M)


@pytest.mark.parametrize("count", [4, 6, 7])
def test_crb_matches_its_closed_form_at_the_centre_of_a_symmetric_layout(count):
    """M receivers evenly on a circle of radius d, at the transmitter's height, transmitter
    at the centre. With b = 10·n/ln 10 and u_i the unit vector to receiver i, the gradient
    of μ_i is g_i = b·u_i/d for position and 1 for EIRP. Σ u_i = 0 and Σ u_i u_iᵀ = (M/2)·I
    for M ≥ 3 evenly spaced, so

        FIM = (1/σ²) [[ (M/2)(b/d)²·I, 0 ], [ 0, M ]],

    EIRP decouples, the position block of FIM⁻¹ is 2σ²d²/(M b²)·I, and
    CRB_rmse = sqrt(trace) = sqrt(2 · 2σ²d²/(M b²)) = 2σd / (b·√M).
    """
    d = 25_000.0
    b = 10.0 * EXPONENT / math.log(10.0)
    bound = crb_m(np.array([ORIGIN]), np.ones((1, count), bool), crb_model(circle_layout(count, d, 17.0)))
    assert bound[0] == pytest.approx(2.0 * SIGMA_DB * d / (b * math.sqrt(count)), rel=1e-6)


def test_crb_is_the_position_block_of_the_full_fisher_inverse():
    rng = np.random.default_rng(3)
    east, north = rng.uniform(-40_000, 40_000, (2, 5))
    lat, lon = from_local_en(east, north, *ORIGIN)
    rx = np.stack([lat, lon, rng.uniform(100, 800, 5)], axis=-1)
    dz = rx[:, 2] - TX_ALTITUDE_M
    b = 10.0 * EXPONENT / math.log(10.0)
    gradient = np.column_stack([b * east / (east**2 + north**2 + dz**2),
                                b * north / (east**2 + north**2 + dz**2), np.ones(5)])
    inverse = np.linalg.inv(gradient.T @ gradient / SIGMA_DB**2)
    expected = math.sqrt(inverse[0, 0] + inverse[1, 1])
    assert crb_m(np.array([ORIGIN]), np.ones((1, 5), bool), crb_model(rx))[0] == pytest.approx(expected, rel=1e-6)


def test_crb_uses_online_receivers_only_and_is_infinite_when_unidentifiable():
    model = crb_model(circle_layout(6, 25_000.0))
    with_two_off = crb_m(np.array([ORIGIN]), np.array([[True, True, True, True, False, False]]), model)
    alone = crb_m(np.array([ORIGIN]), np.ones((1, 4), bool), crb_model(circle_layout(6, 25_000.0)[:4]))
    assert with_two_off[0] == pytest.approx(alone[0], rel=1e-12)
    two = crb_m(np.array([ORIGIN]), np.array([[True, True, False, False, False, False]]), model)
    assert two[0] == np.inf


def test_a_dual_slope_steepens_beyond_its_breakpoint_and_the_oracle_knows_it():
    cfg = scenario("dual-slope", sessions=200)
    model = ChannelModel.from_synth(cfg)
    for truth in list(session_truths(cfg))[:20]:
        mean = model.mean_offset_db(*truth.transmitter[:2]) + truth.eirp_dbm
        np.testing.assert_allclose(truth.signal_dbm - truth.shadowing_db, mean, atol=1e-9)
    rx = receivers_for(cfg)[0]  # at 600 m: distances are 3-D
    places = [from_local_en(0.0, d, rx.latitude, rx.longitude) for d in (1_000.0, 2_500.0, 10_000.0, 40_000.0)]
    loss = [-model.mean_offset_db(*place)[0] for place in places]
    d = [distances_m(*place, cfg.tx_altitude_m, (rx,))[0] for place in places]
    assert d[1] < 3_000.0 < d[2]
    assert loss[1] - loss[0] == pytest.approx(20.0 * np.log10(d[1] / d[0]), abs=1e-6)  # n 2 before the breakpoint
    assert loss[3] - loss[2] == pytest.approx(40.0 * np.log10(d[3] / d[2]), abs=1e-6)  # n 4 beyond


def test_two_eirp_classes_draw_handhelds_and_mobiles_and_the_oracles_nodes_follow_the_mixture():
    cfg = scenario("two-eirp-classes", sessions=2000)
    eirp = np.array([t.eirp_dbm for t in session_truths(cfg)])
    mobile = eirp >= cfg.mobile_eirp_dbm_min
    assert ((eirp >= 27.0) & (eirp <= 34.0) | mobile & (eirp <= 47.0)).all()
    assert mobile.mean() == pytest.approx(0.35, abs=0.03)
    nodes = eirp_nodes_dbm(ChannelModel.from_synth(cfg), 20)
    assert (nodes >= 44.0).sum() == 7 and ((nodes > 27.0) & (nodes < 34.0)).sum() == 13
    # the default draws no class: its EIRPs are the one range's, byte for byte as before
    default = np.array([t.eirp_dbm for t in session_truths(SynthConfig(sessions=50))])
    assert ((default >= 30.0) & (default <= 44.0)).all()
