"""Paired bootstrap intervals of the model's median and p90 against another method's."""

from __future__ import annotations

import numpy as np
import pytest

from training.bench.intervals import BETTER, PERCENTILES, SAME, WORSE, paired_comparisons, resampled_sessions


def session_errors(sessions: int, seed: int = 1) -> np.ndarray:
    """Errors spread like the bench's: log-normal around 25 km, a factor of about 2 either way."""
    return 25_000.0 * np.random.default_rng(seed).lognormal(0.0, 0.7, sessions)


def test_identical_errors_give_a_difference_interval_holding_0_and_a_ratio_of_1():
    errors = session_errors(300)
    for c in paired_comparisons(errors, errors.copy()).values():
        assert c.difference_m.low <= 0.0 <= c.difference_m.high
        assert c.ratio.low == pytest.approx(1.0) and c.ratio.high == pytest.approx(1.0)
        assert c.verdict == SAME


def test_half_the_errors_give_a_ratio_interval_tight_around_one_half_that_excludes_1():
    other = session_errors(400)
    compared = paired_comparisons(0.5 * other, other)
    assert set(compared) == set(PERCENTILES) == {"median", "p90"}
    for c in compared.values():
        assert c.ratio.estimate == pytest.approx(0.5)
        assert c.ratio.low == pytest.approx(0.5, abs=1e-9) and c.ratio.high == pytest.approx(0.5, abs=1e-9)
        assert c.ratio.excludes(1.0) and c.difference_m.high < 0.0
        assert c.verdict == BETTER
    assert all(c.verdict == WORSE for c in paired_comparisons(other, 0.5 * other).values())


def test_pairing_finds_a_small_difference_that_independent_resampling_calls_noise():
    """Both methods' errors follow the session (its geometry, its shadowing); the model is 4 % better on
    each, give or take 1 %. Resampling the methods independently adds the sessions' spread twice."""
    rng = np.random.default_rng(7)
    other = session_errors(400)
    model = other * rng.normal(0.96, 0.01, other.size)
    paired = paired_comparisons(model, other)["median"]
    assert paired.difference_m.high < 0.0 and paired.verdict == BETTER

    model_draws = np.percentile(model[resampled_sessions(model.size, seed=1)], 50.0, axis=1)
    other_draws = np.percentile(other[resampled_sessions(other.size, seed=2)], 50.0, axis=1)
    unpaired_low, unpaired_high = np.percentile(model_draws - other_draws, [2.5, 97.5])
    assert unpaired_low < 0.0 < unpaired_high


def test_the_figures_are_numpys_percentiles_of_the_full_split_and_of_each_paired_resample():
    """p90 with linear interpolation, as `np.percentile` and the bench's metrics compute it; the
    interval is the 2.5th and 97.5th percentile over resamples of the same sessions for both methods."""
    model, other = session_errors(37, seed=3), session_errors(37, seed=4)  # 37: the p90 falls between two sessions
    compared = paired_comparisons(model, other, resamples=300, seed=5)
    draws = resampled_sessions(model.size, resamples=300, seed=5)
    for name, level in PERCENTILES.items():
        c = compared[name]
        assert c.model_m == np.percentile(model, level) and c.other_m == np.percentile(other, level)
        assert c.difference_m.estimate == pytest.approx(c.model_m - c.other_m)
        per_draw = [(np.percentile(model[d], level), np.percentile(other[d], level)) for d in draws]
        differences = [m - o for m, o in per_draw]
        ratios = [m / o for m, o in per_draw]
        assert (c.difference_m.low, c.difference_m.high) == pytest.approx(tuple(np.percentile(differences, [2.5, 97.5])))
        assert (c.ratio.low, c.ratio.high) == pytest.approx(tuple(np.percentile(ratios, [2.5, 97.5])))
    assert compared["p90"].model_m != np.sort(model)[int(0.9 * model.size)]


def test_the_same_errors_give_the_same_intervals_every_time():
    model, other = session_errors(200, seed=8), session_errors(200, seed=9)
    assert paired_comparisons(model, other) == paired_comparisons(model, other)
    assert paired_comparisons(model, other, seed=1)["median"] != paired_comparisons(model, other)["median"]


def test_errors_of_other_sessions_are_refused():
    with pytest.raises(ValueError, match="one length"):
        paired_comparisons(session_errors(10), session_errors(11))
