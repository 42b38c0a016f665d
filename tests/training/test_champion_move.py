"""Which registrations moved the `champion` alias, as the job's result tells the service
(`training.summary.champion_move`): each move is announced once, by the job whose gate made it."""

from __future__ import annotations

from training.champion_gate import GateDecision
from training.registry import Registration
from training.summary import champion_move


def registration(*, gate: GateDecision | None, champion_now: bool) -> Registration:
    return Registration(model_name="m", model_version=2, aliases=["candidate"] + ["champion"] * champion_now,
                        promoted=champion_now, model_uri="models:/m/2", onnx={}, card_uri="c",
                        champion_median_error_m=None, gate=gate)


PROMOTED = GateDecision(True, "test median 9 km ≤ champion version 1's 10 km", champion_version=1)


def test_a_gate_that_promoted_reports_the_champion_it_replaced():
    assert champion_move("job-a", registration(gate=PROMOTED, champion_now=True), "job-a") == {
        "previous_version": 1, "reason": "champion gate: test median 9 km ≤ champion version 1's 10 km"}
    first = GateDecision(True, "no champion yet")
    assert champion_move("job-a", registration(gate=first, champion_now=True), "job-a")["previous_version"] is None


def test_a_gate_that_kept_a_candidate_moved_nothing():
    kept = GateDecision(False, "worse", champion_version=1)
    assert champion_move("job-a", registration(gate=kept, champion_now=False), "job-a") is None


def test_a_replay_of_another_jobs_version_moved_nothing_even_while_it_is_champion():
    assert champion_move("job-b", registration(gate=PROMOTED, champion_now=True), "job-a") is None


def test_a_retry_of_the_job_that_registered_it_reports_its_move_while_it_is_champion():
    """Killed after the aliases, before its result was recorded: the move was never announced."""
    assert champion_move("job-a", registration(gate=PROMOTED, champion_now=True), "job-a") is not None
    assert champion_move("job-a", registration(gate=PROMOTED, champion_now=False), "job-a") is None  # moved on
    assert champion_move("job-a", registration(gate=None, champion_now=True), "job-a") is None  # no gate tags
