"""Is a predicted covariance honest? Coverage, Mahalanobis distance, σ–error rank, reliability.

For a calibrated 2-D Gaussian the squared Mahalanobis distance d² of the truth follows
chi²(2), whose CDF is 1 − exp(−d²/2): the region holding probability p is d² ≤ −2·ln(1 − p),
and the mean d² is 2. The nominal levels 0.393 and 0.865 are the 1σ and 2σ ellipses
(thresholds exactly 1 and 4, as in `metrics.localization_metrics`).

Arrays: predictions and truths [N, 2] lat/lon degrees, covariances [N, 2, 2] east/north m²
in the local frame at the prediction (`metrics.mahalanobis_sq`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr

from training.metrics import localization_errors_m, mahalanobis_sq

# name -> nominal probability of the ellipse
COVERAGE_LEVELS = {
    "coverage_1sigma": 1.0 - math.exp(-0.5),  # 0.393
    "coverage_68": 0.683,
    "coverage_2sigma": 1.0 - math.exp(-2.0),  # 0.865
    "coverage_95": 0.95,
}


def chi2_2dof_quantile(probability):
    """d² threshold of the 2-D Gaussian ellipse holding `probability`."""
    return -2.0 * np.log1p(-np.asarray(probability, dtype=np.float64))


def predicted_sigma_m(cov_m2) -> np.ndarray:
    """[N] one number per prediction: sqrt(trace/2), the RMS of the per-axis σ (√2 × it is
    the predicted RMS radial error). Chosen over the geometric mean of the eigenvalues
    because a long thin ellipse does predict a large error, which the latter would hide."""
    cov = np.asarray(cov_m2, dtype=np.float64)
    return np.sqrt(np.trace(cov, axis1=1, axis2=2) / 2.0)


def calibration_report(pred_latlon, cov_m2, true_latlon) -> dict[str, float]:
    """Coverages at 0.393, 0.683, 0.865 and 0.95 (ideal: those numbers), the mean d² (ideal
    2), and the Spearman rank correlation between `predicted_sigma_m` and the actual error
    (positive when the model knows which of its predictions are worse; NaN if either is
    constant).

    Raises:
        numpy.linalg.LinAlgError: a covariance is singular.
    """
    d2 = mahalanobis_sq(pred_latlon, cov_m2, true_latlon)
    errors = localization_errors_m(pred_latlon, true_latlon)
    report = {name: float(np.mean(d2 <= chi2_2dof_quantile(p))) for name, p in COVERAGE_LEVELS.items()}
    report["mean_mahalanobis_sq"] = float(np.mean(d2))
    report["sigma_error_spearman"] = float(spearmanr(predicted_sigma_m(cov_m2), errors).statistic)
    return report


def reliability_curve(pred_latlon, cov_m2, true_latlon,
                      levels=np.linspace(0.05, 0.95, 19)) -> tuple[np.ndarray, np.ndarray]:
    """(nominal, observed): the fraction of truths inside each nominal ellipse, for the
    reliability diagram (calibrated: on the diagonal; below it: overconfident)."""
    nominal = np.asarray(levels, dtype=np.float64)
    d2 = mahalanobis_sq(pred_latlon, cov_m2, true_latlon)
    observed = np.mean(d2[:, None] <= chi2_2dof_quantile(nominal)[None, :], axis=0)
    return nominal, observed


def fit_variance_scale(pred_latlon, cov_m2, true_latlon) -> float:
    """The post-hoc variance scale s, fitted on VALIDATION sessions: covariance × s.

    s minimises the worst gap between observed and nominal coverage over the four levels
    (1σ, 68 %, 2σ, 95 %), searched on a log grid around mean(d²)/2 (the scale that makes the
    mean d² 2). One scalar fixes over- or under-confidence overall, not the shape of the
    ellipses (reliability curve, Spearman); minimax over the levels keeps every one of them
    close when the errors' tails differ from a Gaussian's, where matching the mean d² would let
    the tails decide.
    """
    d2 = mahalanobis_sq(pred_latlon, cov_m2, true_latlon)
    nominal = np.array(list(COVERAGE_LEVELS.values()))
    thresholds = chi2_2dof_quantile(nominal)
    start = float(np.mean(d2) / 2.0)
    scales = start * np.exp(np.linspace(-1.5, 1.5, 301))
    worst = [np.max(np.abs(np.mean(d2[:, None] / s <= thresholds[None, :], axis=0) - nominal)) for s in scales]
    return float(scales[int(np.argmin(worst))])
