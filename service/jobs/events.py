"""The events a job's life announces, as outbox rows: one builder each, used by the consumer,
the worker and the job store alike."""

from __future__ import annotations

from foundation.child_protocol import Failure
from messages import (ModelChampionChanged, ModelRegistered, TrainingAccepted, TrainingCancelled, TrainingFailed,
                      make_event)
from service.jobs.tables import Job, OutboxMessage


def outbox(event) -> OutboxMessage:
    return OutboxMessage(id=event.id, routing_key=event.data.ROUTING_KEY, body=event.to_bytes())


def accepted_message(job: Job) -> OutboxMessage:
    return outbox(make_event(TrainingAccepted(job_id=job.id, trigger_id=job.trigger_id, dataset_id=job.dataset_id,
                                              version=job.dataset_version, config_hash=job.config_hash),
                             subject=f"job/{job.id}"))


def cancelled_message(job: Job, reason: str) -> OutboxMessage:
    return outbox(make_event(TrainingCancelled(job_id=job.id, reason=reason), subject=f"job/{job.id}"))


def failed_message(job: Job, failure: Failure, *, retryable: bool) -> OutboxMessage:
    """`failure` is the child's (`Failed`) or the worker's own; `retryable`: whether it will be retried."""
    return outbox(make_event(TrainingFailed(
        job_id=job.id, stage=failure.stage, error_type=failure.error_type or "Error", message=failure.message[:2000],
        retryable=retryable, attempt=max(job.attempt, 1)), subject=f"job/{job.id}"))


def registered_message(job: Job, result: dict) -> OutboxMessage:
    """Raises pydantic.ValidationError (or KeyError) when the child's result is not a valid event."""
    model, metrics = result["model"], result["metrics"]
    return outbox(make_event(ModelRegistered(
        job_id=job.id, model_name=model["model_name"], model_version=model["model_version"],
        aliases=model["aliases"], promoted=model["promoted"], model_uri=model["model_uri"], onnx=model["onnx"],
        card_uri=model["card_uri"], metrics={k: metrics[k] for k in ("median_error_m", "p90_error_m",
                                                                        "coverage_1sigma", "coverage_2sigma")},
        dataset={"id": job.dataset_id, "version": job.dataset_version, "uri": job.dataset_uri},
        mlflow_run_id=result["mlflow"]["run_id"]), subject=f"{model['model_name']}/{model['model_version']}"))


def succeeded_messages(job: Job, result: dict) -> list[OutboxMessage]:
    """model.registered, then model.champion-changed when the job's champion gate moved the alias
    (the result's `champion_move`). Raises pydantic.ValidationError (or KeyError) like registered_message."""
    move, model = result.get("champion_move"), result["model"]
    if move is None:
        return [registered_message(job, result)]
    changed = ModelChampionChanged(
        model_name=model["model_name"], version=model["model_version"], previous_version=move["previous_version"],
        onnx=model["onnx"], card_uri=model["card_uri"], cause="gate", job_id=job.id, reason=move["reason"])
    return [registered_message(job, result), champion_changed_message(changed)]


def champion_changed_message(changed: ModelChampionChanged) -> OutboxMessage:
    return outbox(make_event(changed, subject=f"{changed.model_name}/{changed.version}"))


def abandoned_failure(job: Job) -> Failure:
    """Why a job whose lease expired on its last attempt is over (its worker died every time)."""
    return Failure(stage="train", error_type="WorkerLost", retryable=False,
                   message=f"the worker running attempt {job.attempt} stopped renewing its lease (killed or frozen); "
                           f"{job.attempt} attempts used")
