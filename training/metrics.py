"""Localization metrics: the numbers on the model card and in MLflow (`model.md`).

Errors are great-circle metres. Calibration is judged with the squared Mahalanobis
distance of the true position under the predicted Gaussian, in the local east/north
frame at the predicted position (the frame the model's covariance is expressed in).
For a 2-D Gaussian d² follows chi²(2), whose CDF is 1 − exp(−d²/2): that closed form
gives the ideal coverages (0.393, 0.865, 0.95) without needing scipy.
"""

from __future__ import annotations

import math

import numpy as np

from training.geodesy import haversine_m, to_local_en

# chi²(2) quantile at 0.95: −2·ln(0.05) ≈ 5.991.
CHI2_2DOF_95 = -2.0 * math.log(0.05)
LOG_2PI = math.log(2.0 * math.pi)


def localization_errors_m(pred_latlon, true_latlon) -> np.ndarray:
    """Great-circle distance in metres between predicted and true [N, 2] lat/lon degrees."""
    pred = np.asarray(pred_latlon, dtype=np.float64)
    true = np.asarray(true_latlon, dtype=np.float64)
    return haversine_m(pred[:, 0], pred[:, 1], true[:, 0], true[:, 1])


def error_vectors_en_m(pred_latlon, true_latlon) -> np.ndarray:
    """[N, 2] east/north metres of true − pred, in the local frame at each prediction."""
    pred = np.asarray(pred_latlon, dtype=np.float64)
    true = np.asarray(true_latlon, dtype=np.float64)
    east, north = to_local_en(true[:, 0], true[:, 1], pred[:, 0], pred[:, 1])
    return np.stack([east, north], axis=-1)


def mahalanobis_sq(pred_latlon, cov_m2, true_latlon) -> np.ndarray:
    """[N] d² = eᵀ Σ⁻¹ e with e = true − pred (east/north metres) and Σ [N, 2, 2] in m².

    Raises:
        numpy.linalg.LinAlgError: a covariance is singular.
    """
    err = error_vectors_en_m(pred_latlon, true_latlon)
    cov = np.asarray(cov_m2, dtype=np.float64)
    solved = np.linalg.solve(cov, err[..., None])[..., 0]
    return np.einsum("ni,ni->n", err, solved)


def point_metrics(pred_latlon, true_latlon) -> dict[str, float]:
    """Median, 90th percentile and mean error in metres (for baselines without covariance)."""
    errors = localization_errors_m(pred_latlon, true_latlon)
    return {
        "median_error_m": float(np.median(errors)),
        "p90_error_m": float(np.percentile(errors, 90)),
        "mean_error_m": float(np.mean(errors)),
    }


def localization_metrics(pred_latlon, cov_m2, true_latlon) -> dict[str, float]:
    """The model card's `metrics` block: errors, Gaussian coverages and the mean NLL.

    `nll` is the mean negative log-likelihood of the true position under the predicted
    2-D Gaussian in metres: log(2π) + ½·log det Σ + ½·d².
    """
    d2 = mahalanobis_sq(pred_latlon, cov_m2, true_latlon)
    _, logdet = np.linalg.slogdet(np.asarray(cov_m2, dtype=np.float64))
    nll = LOG_2PI + 0.5 * logdet + 0.5 * d2
    return {
        **point_metrics(pred_latlon, true_latlon),
        "coverage_1sigma": float(np.mean(d2 <= 1.0)),
        "coverage_2sigma": float(np.mean(d2 <= 4.0)),
        "coverage_95": float(np.mean(d2 <= CHI2_2DOF_95)),
        "nll": float(np.mean(nll)),
    }
