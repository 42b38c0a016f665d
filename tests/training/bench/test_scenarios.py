"""The named scenarios: each is reproducible from its seed and realises the physics it names."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations, islice

import numpy as np
import pytest

from training.datasets.manifest import MANIFEST_FILE, Manifest
from training.geodesy import from_local_en, to_local_en
from training.bench.scenarios import QUICK_SESSIONS, SCENARIOS, scenario
from training.datasets.channel import distances_m, log_distance_path_loss_db
from training.datasets.synth import (
    SynthConfig,
    generate_sessions,
    receiver_calibration_db,
    receivers_for,
    session_truths,
    static_field_db,
    synthesize_dataset,
    total_shadowing_sigma_db,
)
from training.datasets.synth_config import DEFAULT_RECEIVERS

STATIC = SCENARIOS["static-shadowing"]
RANDOM_70CM = SCENARIOS["random-70cm"]


def fingerprint(cfg: SynthConfig, sessions: int = 20) -> list[tuple]:
    """Everything drawn for the first sessions: truths and recorded bytes."""
    small = scenario(cfg.dataset_id, sessions=sessions)
    return [
        (t.session_id, t.transmitter, t.eirp_dbm, t.shadowing_db.tobytes(), t.static_shadowing_db.tobytes(),
         t.signal_dbm.tobytes(), r.online.tobytes(), r.iq.tobytes())
        for t, r in zip(session_truths(small), generate_sessions(small))
    ]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_scenario_generates_deterministically_from_its_seed(name):
    cfg = SCENARIOS[name]
    assert cfg.dataset_id == name
    assert fingerprint(cfg) == fingerprint(cfg)


def test_different_scenarios_differ():
    assert len({cfg.seed for cfg in SCENARIOS.values()}) == len(SCENARIOS)
    first_iq = {name: next(generate_sessions(scenario(name, sessions=1))).iq.tobytes() for name in SCENARIOS}
    for a, b in combinations(SCENARIOS, 2):
        assert first_iq[a] != first_iq[b], (a, b)


def test_the_named_physics():
    assert {"nw-italy-2m", "random-70cm", "offline-heavy", "static-shadowing", "towns"} <= set(SCENARIOS)
    nw = SCENARIOS["nw-italy-2m"]
    assert (nw.receivers, nw.center_frequency_hz, nw.path_loss_exponent, nw.shadowing_sigma_db) == (
        DEFAULT_RECEIVERS, 145.5e6, 3.0, 6.0)
    assert (RANDOM_70CM.center_frequency_hz, RANDOM_70CM.path_loss_exponent, RANDOM_70CM.shadowing_sigma_db) == (
        435e6, 3.2, 7.0)
    assert total_shadowing_sigma_db(STATIC) == pytest.approx(5.66, abs=0.01)


def test_quick_variants_keep_the_sessions_they_keep():
    quick = scenario("nw-italy-2m", sessions=QUICK_SESSIONS)
    assert quick.sessions == QUICK_SESSIONS and scenario("nw-italy-2m") is SCENARIOS["nw-italy-2m"]
    full_first = next(session_truths(SCENARIOS["nw-italy-2m"]))
    assert next(session_truths(quick)).signal_dbm.tobytes() == full_first.signal_dbm.tobytes()
    with pytest.raises(KeyError, match="known: nw-italy-2m"):
        scenario("nw-italy-6m")
    with pytest.raises(TypeError):
        SCENARIOS["mine"] = quick  # the table is read-only


def test_random_70cm_draws_7_to_10_receivers_in_a_60_km_square_reproducibly():
    receivers = receivers_for(RANDOM_70CM)
    assert 7 <= len(receivers) <= 10
    assert [r.id for r in receivers] == [f"rx-{i:02d}" for i in range(len(receivers))]
    east_m, north_m = to_local_en([r.latitude for r in receivers], [r.longitude for r in receivers],
                                  RANDOM_70CM.random_center_latitude, RANDOM_70CM.random_center_longitude)
    assert np.all(np.abs(east_m) <= 30_000 + 1e-6) and np.all(np.abs(north_m) <= 30_000 + 1e-6)
    assert all(100 <= r.altitude_m <= 800 for r in receivers)
    assert receivers_for(RANDOM_70CM) == receivers
    assert receivers_for(replace(RANDOM_70CM, seed=RANDOM_70CM.seed + 1)) != receivers
    counts = {len(receivers_for(replace(RANDOM_70CM, seed=seed))) for seed in range(60)}
    assert counts == {7, 8, 9, 10}


def test_a_random_layout_is_what_the_dataset_records(tmp_path):
    cfg = scenario("random-70cm", sessions=3)
    cfg = replace(cfg, samples_per_capture=64)
    uri = synthesize_dataset(cfg, str(tmp_path))
    manifest = Manifest.model_validate_json((tmp_path / "random-70cm" / "v1" / MANIFEST_FILE).read_text())
    assert uri.endswith("random-70cm/v1")
    assert tuple(manifest.receivers) == receivers_for(cfg)
    assert next(generate_sessions(cfg)).iq.shape == (len(manifest.receivers), 64)


def test_offline_heavy_loses_30_percent_of_receivers():
    truths = list(session_truths(scenario("offline-heavy", sessions=500)))
    assert 1 - np.mean([t.online for t in truths]) == pytest.approx(0.30, abs=0.03)
    assert all(t.online.any() for t in truths)


def test_signal_budget_carries_both_shadowings_on_a_random_layout():
    cfg = replace(RANDOM_70CM, sessions=30, static_shadowing_sigma_db=3.0)
    receivers, calibration_db = receivers_for(cfg), receiver_calibration_db(cfg)
    for truth in session_truths(cfg):
        path_loss_db = log_distance_path_loss_db(distances_m(*truth.transmitter, receivers),
                                                 cfg.center_frequency_hz, cfg.path_loss_exponent)
        budget_dbm = truth.eirp_dbm - path_loss_db + truth.shadowing_db + truth.static_shadowing_db
        np.testing.assert_allclose(truth.signal_dbm - budget_dbm, calibration_db, atol=1e-9)


def ring(distance_m: float, positions: int = 3000, seed: int = 0):
    """Random positions over a 400 km square, and partners `distance_m` away in random directions."""
    rng = np.random.default_rng(seed)
    east_m, north_m = rng.uniform(-200_000, 200_000, size=(2, positions))
    angle = rng.uniform(0, 2 * np.pi, positions)
    here = from_local_en(east_m, north_m, 45.0, 8.0)
    there = from_local_en(east_m + distance_m * np.cos(angle), north_m + distance_m * np.sin(angle), 45.0, 8.0)
    return here, there


def mean_correlation(cfg: SynthConfig, distance_m: float) -> float:
    here, there = ring(distance_m)
    a, b = static_field_db(cfg, *here), static_field_db(cfg, *there)
    return float(np.mean([np.corrcoef(a[:, r], b[:, r])[0, 1] for r in range(a.shape[1])]))


def test_static_field_has_the_requested_std():
    here, _ = ring(0.0)
    field_db = static_field_db(STATIC, *here)
    assert field_db.shape == (3000, len(DEFAULT_RECEIVERS))
    assert field_db.std() == pytest.approx(STATIC.static_shadowing_sigma_db, rel=0.15)
    # and over the transmitters the scenario actually draws
    static_db = np.array([t.static_shadowing_db for t in session_truths(scenario("static-shadowing", sessions=1500))])
    assert static_db.std() == pytest.approx(STATIC.static_shadowing_sigma_db, rel=0.15)


def test_static_field_is_correlated_over_its_correlation_length_only():
    assert STATIC.static_shadowing_correlation_m == 8_000
    assert mean_correlation(STATIC, 500.0) > 0.9  # exp(-0.5 / 8) = 0.94
    assert mean_correlation(STATIC, 8_000.0) == pytest.approx(np.exp(-1), abs=0.1)
    assert abs(mean_correlation(STATIC, 50_000.0)) < 0.3  # exp(-50 / 8) = 0.002


def test_static_field_is_fixed_per_position_and_independent_per_receiver():
    truths = list(session_truths(scenario("static-shadowing", sessions=200)))
    latitude, longitude = np.array([t.transmitter[:2] for t in truths]).T
    np.testing.assert_array_equal(np.array([t.static_shadowing_db for t in truths]),
                                  static_field_db(STATIC, latitude, longitude))  # same position, same value
    np.testing.assert_array_equal(static_field_db(STATIC, 45.0, 8.0), static_field_db(STATIC, 45.0, 8.0))
    here, _ = ring(0.0)
    between_receivers = np.corrcoef(static_field_db(STATIC, *here).T)[np.triu_indices(len(DEFAULT_RECEIVERS), 1)]
    assert np.abs(between_receivers).max() < 0.3


def test_default_config_has_no_static_field():
    np.testing.assert_array_equal(static_field_db(SynthConfig(), [45.0, 44.5], [7.5, 8.0]), np.zeros((2, 7)))
    assert all(not t.static_shadowing_db.any() for t in islice(session_truths(SynthConfig()), 20))


def test_a_misconfigured_layout_is_refused_naming_every_problem():
    with pytest.raises(ValueError, match="receiver_layout 'grid'.*random_receivers_min"):
        SynthConfig(receiver_layout="grid", random_receivers_min=11)


def test_towns_trains_on_six_towns_and_tests_on_uniform_sessions_with_the_reference_physics():
    towns = SCENARIOS["towns"]
    nw = SCENARIOS["nw-italy-2m"]
    # nw-italy-2m's receivers and physics; only the placement of transmitters differs
    assert towns == replace(nw, seed=towns.seed, dataset_id="towns", towns=6, town_radius_m=5_000.0,
                            uniform_test_share=0.035)
    splits = [t.split for t in session_truths(scenario("towns", sessions=QUICK_SESSIONS))]
    assert set(splits) == {"train", "val", "test"}  # every session pinned: the spatial blocks decide nothing
