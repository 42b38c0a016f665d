"""kNN fingerprinting in received-power space."""

from __future__ import annotations

import numpy as np

from service.training.knn import knn_fingerprint

NOISE_DBM = -120.0


def training_set(m: int = 50, receivers: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    power = rng.uniform(-125.0, -60.0, (m, receivers))
    latlon = np.column_stack([rng.uniform(44.0, 46.0, m), rng.uniform(7.0, 9.0, m)])
    return power, np.ones((m, receivers), bool), latlon


def test_a_query_identical_to_a_training_fingerprint_lands_exactly_on_it():
    power, online, latlon = training_set()
    pred = knn_fingerprint(power, online, latlon, power[[3, 17]], online[[3, 17]], k=5, noise_floor_dbm=NOISE_DBM)
    np.testing.assert_array_equal(pred, latlon[[3, 17]])


def test_powers_below_the_noise_floor_all_mean_not_heard():
    power, online, latlon = training_set()
    power[8, 1] = -124.0
    query = power[[8]].copy()
    query[0, 1] = -140.0
    pred = knn_fingerprint(power, online, latlon, query, online[[8]], noise_floor_dbm=NOISE_DBM)
    np.testing.assert_array_equal(pred, latlon[[8]])


def test_offline_receivers_are_left_out_of_the_distance_on_either_side():
    power, online, latlon = training_set()
    online[12, 4] = False  # the training session missed receiver 4 ...
    power[12, 4] = -np.inf
    query = power[[12]].copy()
    query[0, 4] = -30.0  # ... and the query's receiver 4 is online with anything at all
    query_online = np.ones((1, 5), bool)
    query[0, 0], query_online[0, 0] = np.nan, False  # the query missed receiver 0
    pred = knn_fingerprint(power, online, latlon, query, query_online, noise_floor_dbm=NOISE_DBM)
    np.testing.assert_array_equal(pred, latlon[[12]])


def test_neighbours_are_weighted_by_inverse_rms_distance():
    train = np.array([[-100.0, -100.0], [-104.0, -100.0], [-50.0, -50.0]])
    latlon = np.array([[45.0, 8.0], [46.0, 9.0], [10.0, 10.0]])
    query = np.array([[-101.0, -100.0]])  # RMS distances √(1/2) and √(9/2): weights 3 : 1
    pred = knn_fingerprint(train, np.ones((3, 2), bool), latlon, query, np.ones((1, 2), bool), k=2,
                           noise_floor_dbm=NOISE_DBM)
    np.testing.assert_allclose(pred, [[45.25, 8.25]])


def test_a_query_sharing_no_receiver_with_anyone_gets_nan():
    power, online, latlon = training_set(receivers=2)
    online[:, 1] = False
    pred = knn_fingerprint(power, online, latlon, np.array([[-90.0, -90.0]]), np.array([[False, True]]),
                           noise_floor_dbm=NOISE_DBM)
    assert np.isnan(pred).all()
