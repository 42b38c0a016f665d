"""Localization metrics: distances, Mahalanobis calibration and the model card's numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.geodesy import EARTH_RADIUS_M, from_local_en
from training.metrics import (
    localization_errors_m,
    localization_metrics,
    mahalanobis_sq,
    point_metrics,
)

TORINO = (45.0703, 7.6869)
MILANO = (45.4642, 9.1900)
CARD_METRICS = {"median_error_m", "p90_error_m", "mean_error_m", "coverage_1sigma",
                "coverage_2sigma", "coverage_95", "nll"}


def _law_of_cosines_m(a, b) -> float:
    """Great-circle distance computed independently of the haversine formula."""
    p1, l1, p2, l2 = map(math.radians, (*a, *b))
    cos_c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(l2 - l1)
    return EARTH_RADIUS_M * math.acos(cos_c)


def _rotated_covariance_m2(sigma_major_m, sigma_minor_m, angle_deg) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return rot @ np.diag([sigma_major_m**2, sigma_minor_m**2]) @ rot.T


def test_one_degree_of_latitude_is_111_195_km():
    errors = localization_errors_m(np.array([[45.0, 8.0]]), np.array([[46.0, 8.0]]))
    assert errors[0] == pytest.approx(111_195.0, abs=5.0)


def test_torino_milano_matches_the_spherical_law_of_cosines():
    expected = _law_of_cosines_m(TORINO, MILANO)
    errors = localization_errors_m(np.array([TORINO]), np.array([MILANO]))
    assert 125_000 <= expected <= 127_000
    assert errors[0] == pytest.approx(expected, rel=1e-6)


def test_mahalanobis_uses_east_north_metres_at_the_prediction():
    pred = np.array([[45.0, 8.0], [45.0, 8.0]])
    lat, lon = from_local_en(np.array([1000.0, 0.0]), np.array([0.0, 4000.0]), 45.0, 8.0)
    cov = np.array([np.diag([1000.0**2, 4000.0**2])] * 2)
    d2 = mahalanobis_sq(pred, cov, np.stack([lat, lon], axis=-1))
    np.testing.assert_allclose(d2, [1.0, 1.0], rtol=1e-9)


def test_exact_gaussian_errors_give_ideal_coverage_and_expected_nll():
    rng = np.random.default_rng(0)
    n = 20_000
    cov = _rotated_covariance_m2(8_000.0, 3_000.0, 30.0)
    pred_lat, pred_lon = 45.0 + rng.uniform(-0.5, 0.5, n), 8.0 + rng.uniform(-0.5, 0.5, n)
    err = rng.multivariate_normal([0.0, 0.0], cov, size=n)
    true_lat, true_lon = from_local_en(err[:, 0], err[:, 1], pred_lat, pred_lon)

    metrics = localization_metrics(np.stack([pred_lat, pred_lon], -1), np.broadcast_to(cov, (n, 2, 2)),
                                   np.stack([true_lat, true_lon], -1))

    assert metrics["coverage_1sigma"] == pytest.approx(1 - math.exp(-0.5), abs=0.02)
    assert metrics["coverage_2sigma"] == pytest.approx(1 - math.exp(-2.0), abs=0.02)
    assert metrics["coverage_95"] == pytest.approx(0.95, abs=0.02)
    expected_nll = math.log(2 * math.pi) + 0.5 * math.log(np.linalg.det(cov)) + 1.0
    assert metrics["nll"] == pytest.approx(expected_nll, abs=0.05)


def test_card_metrics_are_plain_floats_with_the_contract_names():
    pred = np.array([[45.0, 8.0], [45.1, 8.1]])
    metrics = localization_metrics(pred, np.array([np.eye(2) * 1e6] * 2), pred + 0.01)
    assert set(metrics) == CARD_METRICS
    assert all(type(v) is float for v in metrics.values())


def test_point_metrics_report_median_p90_and_mean_in_metres():
    lat, lon = from_local_en(np.zeros(10), np.arange(1, 11) * 1000.0, 45.0, 8.0)
    metrics = point_metrics(np.tile([45.0, 8.0], (10, 1)), np.stack([lat, lon], -1))
    assert metrics == pytest.approx({"median_error_m": 5500.0, "p90_error_m": 9100.0,
                                     "mean_error_m": 5500.0}, rel=1e-3)
