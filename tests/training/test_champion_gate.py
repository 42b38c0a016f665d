"""The champion gate's rule: a candidate is promoted only when, on the same sessions as the champion,
its median is no worse, its p90 no worse beyond the tolerance and its calibration no worse beyond
the tolerance; its decision and both models' figures survive the trip through the version's tags."""

from __future__ import annotations

import pytest

from training.champion_gate import CALIBRATION_TOLERANCE, P90_TOLERANCE, GateDecision, GateScores, decide

CHAMPION = GateScores(median_error_m=20_000.0, p90_error_m=50_000.0, coverage_95=0.94)


def test_a_better_median_with_a_much_worse_tail_is_not_promoted():
    candidate = GateScores(median_error_m=18_000.0, p90_error_m=50_000.0 * (1 + P90_TOLERANCE) + 1_000.0,
                           coverage_95=0.94)
    decision = decide(True, candidate, (3, CHAMPION))
    assert not decision.promoted and decision.reason.startswith("worse on p90")


def test_a_better_median_with_an_overconfident_covariance_is_not_promoted():
    candidate = GateScores(median_error_m=18_000.0, p90_error_m=45_000.0,
                           coverage_95=0.95 - CHAMPION.calibration_gap - CALIBRATION_TOLERANCE - 0.02)
    assert decide(True, candidate, (3, CHAMPION)).reason.startswith("worse on calibration")


@pytest.mark.parametrize("p90_ratio", [1.0, 1 + P90_TOLERANCE])
def test_no_worse_on_all_three_is_promoted(p90_ratio):
    candidate = GateScores(median_error_m=20_000.0, p90_error_m=50_000.0 * p90_ratio, coverage_95=0.96)
    decision = decide(True, candidate, (3, CHAMPION))
    assert decision.promoted and decision.reason.startswith("no worse")


def test_a_worse_median_is_not_promoted_whatever_else():
    candidate = GateScores(median_error_m=20_001.0, p90_error_m=30_000.0, coverage_95=0.95)
    assert decide(True, candidate, (3, CHAMPION)).reason.startswith("worse on median")


def test_a_failed_parity_check_or_an_incomparable_champion_never_promotes():
    better = GateScores(median_error_m=1.0, p90_error_m=2.0, coverage_95=0.95)
    assert not decide(False, better, None).promoted
    assert not decide(True, better, (3, None)).promoted
    assert decide(True, better, None).promoted  # no champion yet


def test_the_decision_and_both_models_figures_survive_the_version_tags():
    candidate = GateScores(median_error_m=18_000.0, p90_error_m=70_000.0, coverage_95=0.9)
    decision = decide(True, candidate, (3, CHAMPION))
    assert GateDecision.from_tags(decision.tags()) == decision
