"""kNN fingerprinting in received-power space."""

from __future__ import annotations

import numpy as np

from training.baselines.knn import KnnParams, knn_fingerprint, tune_knn

NOISE_DBM = -120.0


def training_set(m: int = 50, receivers: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    power = rng.uniform(-125.0, -60.0, (m, receivers))
    latlon = np.column_stack([rng.uniform(44.0, 46.0, m), rng.uniform(7.0, 9.0, m)])
    return power, np.ones((m, receivers), bool), latlon


def test_a_query_identical_to_a_training_fingerprint_lands_exactly_on_it():
    power, online, latlon = training_set()
    pred = knn_fingerprint(power, online, latlon, power[[3, 17]], online[[3, 17]], noise_floor_dbm=NOISE_DBM)
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
    pred = knn_fingerprint(train, np.ones((3, 2), bool), latlon, query, np.ones((1, 2), bool),
                           noise_floor_dbm=NOISE_DBM, params=KnnParams(k=2))
    np.testing.assert_allclose(pred, [[45.25, 8.25]])


def test_a_query_sharing_no_receiver_with_anyone_gets_nan():
    power, online, latlon = training_set(receivers=2)
    online[:, 1] = False
    pred = knn_fingerprint(power, online, latlon, np.array([[-90.0, -90.0]]), np.array([[False, True]]),
                           noise_floor_dbm=NOISE_DBM)
    assert np.isnan(pred).all()


def test_offline_receivers_read_as_not_heard_when_told_so():
    train = np.array([[-100.0, -130.0], [-100.0, -60.0]])  # session 0 did not hear receiver 1
    latlon = np.array([[45.0, 8.0], [46.0, 9.0]])
    query, query_online = np.array([[-100.0, 0.0]]), np.array([[True, False]])  # receiver 1 offline
    for offline, expected in (("not_heard", latlon[[0]]), ("skip", latlon.mean(axis=0, keepdims=True))):
        pred = knn_fingerprint(train, np.ones((2, 2), bool), latlon, query, query_online,
                               noise_floor_dbm=NOISE_DBM, params=KnnParams(k=2, offline=offline))
        np.testing.assert_allclose(pred, expected)


def test_mean_abs_distance_and_uniform_weights():
    train = np.array([[-100.0, -100.0], [-103.0, -103.0], [-100.0, -106.0]])
    latlon = np.array([[45.0, 8.0], [46.0, 9.0], [47.0, 10.0]])
    # L1 means 3, 3 for sessions 1, 2 but RMS 3 and 4.24: only the RMS metric prefers session 1.
    params = dict(noise_floor_dbm=NOISE_DBM)
    query = np.array([[-103.0, -100.0]])
    rms = knn_fingerprint(train[1:], np.ones((2, 2), bool), latlon[1:], query, np.ones((1, 2), bool),
                          params=KnnParams(k=1, metric="rms"), **params)
    np.testing.assert_allclose(rms, latlon[[1]])
    uniform = knn_fingerprint(train, np.ones((3, 2), bool), latlon, query, np.ones((1, 2), bool),
                              params=KnnParams(k=3, weights="uniform", metric="mean_abs"), **params)
    np.testing.assert_allclose(uniform, latlon.mean(axis=0, keepdims=True))


def test_tuning_picks_the_setting_with_the_lowest_validation_median():
    """A power-law field sampled densely: fingerprints near each other are near in space, so
    tuning must beat the default k = 5 on its own validation sessions and report that median."""
    rng = np.random.default_rng(3)
    rx = rng.uniform(0, 1, (6, 2))

    def sessions(n):
        xy = rng.uniform(0, 1, (n, 2))
        d = np.linalg.norm(xy[:, None] - rx[None], axis=-1)
        power = -60.0 - 30 * np.log10(d + 0.01) + rng.normal(0, 1.0, d.shape)
        return power, np.ones(power.shape, bool), np.column_stack([45 + xy[:, 1] * 0.05, 8 + xy[:, 0] * 0.05])

    train, val = sessions(800), sessions(200)
    params, median = tune_knn(*train, *val, noise_floor_dbm=NOISE_DBM)
    pred = knn_fingerprint(*train, val[0], val[1], noise_floor_dbm=NOISE_DBM, params=params)
    default = knn_fingerprint(*train, val[0], val[1], noise_floor_dbm=NOISE_DBM)
    from training.metrics import localization_errors_m
    assert np.median(localization_errors_m(pred, val[2])) == median
    assert median <= np.median(localization_errors_m(default, val[2]))
