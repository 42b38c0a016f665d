"""Paired bootstrap intervals on the bench's headline errors: the model against one other method.

What it computes: for the median and the 90th percentile of the per-session errors (each as
`np.percentile` computes it, linear interpolation), the model's value minus the other method's
(metres) and the model's value divided by the other's, each with a 95 % percentile-bootstrap
interval: `RESAMPLES` draws of the test sessions with replacement, both statistics recomputed on
each draw, and the 2.5th and 97.5th percentiles of the draws' differences and ratios. The seed is
fixed, so a report is the same every time it is written from the same errors.

Why paired: every method is scored on the same test sessions, and much of a session's error
belongs to the session (its geometry, which receivers heard it, its shadowing draw), so two
methods' errors rise and fall together. Each draw takes the same sessions for both methods, so
that shared part cancels in the difference and the interval measures how much the methods
disagree. Drawing each method's sessions independently would add the shared spread twice and
call real differences noise.

Why one verdict serves both intervals: errors are positive, so on every draw the difference is
below 0 exactly when the ratio is below 1; the verdict is read off the difference's interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0  # fixed: the same errors give the same intervals, report after report
PERCENTILES = {"median": 50.0, "p90": 90.0}
BETTER, SAME, WORSE = "better", "not distinguishable", "worse"  # the model's verdict against the other method


@dataclass(frozen=True)
class Interval:
    """A figure on all the test sessions and its bootstrap interval."""

    estimate: float
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        return bool(self.low > value or self.high < value)


@dataclass(frozen=True)
class PairedComparison:
    """One statistic of the errors (median or p90), the model's against another method's."""

    statistic: str  # a key of PERCENTILES
    model_m: float
    other_m: float
    difference_m: Interval  # model − other
    ratio: Interval  # model ÷ other

    @property
    def verdict(self) -> str:
        """BETTER or WORSE when the difference's interval excludes 0 (on that side), else SAME."""
        if not self.difference_m.excludes(0.0):
            return SAME
        return BETTER if self.difference_m.high < 0.0 else WORSE


def resampled_sessions(sessions: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, sessions] indices of the test sessions, drawn with replacement."""
    return np.random.default_rng(seed).integers(0, sessions, size=(resamples, sessions), dtype=np.intp)


def paired_comparisons(model_errors, other_errors, *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                       seed: int = SEED) -> dict[str, PairedComparison]:
    """The model's median and p90 against the other method's, each with paired bootstrap intervals.

    Raises:
        ValueError: the arrays are not two equally long 1-D arrays of the same sessions' errors.
    """
    model = np.asarray(model_errors, dtype=np.float64)
    other = np.asarray(other_errors, dtype=np.float64)
    if model.ndim != 1 or model.shape != other.shape or model.size == 0:
        raise ValueError(f"need two per-session error arrays of one length; got {model.shape} and {other.shape}")
    levels = list(PERCENTILES.values())
    draws = resampled_sessions(model.size, resamples, seed)
    model_draws = np.percentile(model[draws], levels, axis=1)  # [statistics, resamples]
    other_draws = np.percentile(other[draws], levels, axis=1)
    model_full, other_full = np.percentile(model, levels), np.percentile(other, levels)
    tails = [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)]
    with np.errstate(divide="ignore", invalid="ignore"):
        difference = np.percentile(model_draws - other_draws, tails, axis=1)  # [2, statistics]
        ratio = np.percentile(model_draws / other_draws, tails, axis=1)
        full_ratio = model_full / other_full
    return {name: PairedComparison(name, float(model_full[s]), float(other_full[s]),
                                   Interval(float(model_full[s] - other_full[s]), *map(float, difference[:, s])),
                                   Interval(float(full_ratio[s]), *map(float, ratio[:, s])))
            for s, name in enumerate(PERCENTILES)}
