"""Prometheus metrics of the service: jobs by state, queue lag, job duration, last success, outbox."""

from __future__ import annotations

from enum import Enum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.jobs.store import JobStatus, JobStore


class AttemptEnd(str, Enum):
    """How one run of a job ended: the worker's log event and the duration histogram's label."""

    SUCCEEDED = "succeeded"  # model.registered recorded
    FAILED = "failed"  # a final training.failed
    RETRYING = "retrying"  # a retryable failure, queued again after backoff
    REQUEUED = "requeued"  # handed back at shutdown, its attempt kept
    CANCELLED = "cancelled"
    LOST_CLAIM = "lost-claim"  # another replica owns the job now; it reports it
    UNRECORDED = "unrecorded"  # shut down before the store took the outcome: the next claim does
    WORKER_ERROR = "worker-error"  # the worker failed around the job and could not record it


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.jobs = Gauge("heimdall_training_jobs", "Jobs in the store by state", ["state"], registry=self.registry)
        self.queue_lag = Gauge("heimdall_training_queue_lag_seconds",
                               "Age of the oldest job that is due but not yet running", registry=self.registry)
        self.duration = Histogram("heimdall_training_job_duration_seconds", "Wall time of job runs by outcome",
                                  ["outcome"], registry=self.registry,
                                  buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600))
        for end in AttemptEnd:  # at 0 from the start, so that increase() counts each outcome's first run
            self.duration.labels(outcome=end.value)
        self.last_success = Gauge("heimdall_training_last_success_timestamp_seconds",
                                  "Unix time of the last job that registered a model", registry=self.registry)
        self.outbox_pending = Gauge("heimdall_training_outbox_pending", "Events decided but not yet published",
                                    registry=self.registry)
        self.unroutable = Counter("heimdall_training_outbox_unroutable_total",
                                  "Publishes returned because no queue was bound", ["routing_key"],
                                  registry=self.registry)
        self.nacked = Counter("heimdall_training_outbox_nacked_total",
                              "Publishes the broker refused (a queue at its length limit)", ["routing_key"],
                              registry=self.registry)
        self.outbox_parked = Gauge("heimdall_training_outbox_parked",
                                   "Events refused so often that an operator should look (kept, still retried)",
                                   registry=self.registry)
        self.warm_spare_ready = Gauge("heimdall_training_warm_spare_ready",
                                      "1 while a warm spare has done its imports and waits for a job",
                                      registry=self.registry)
        self.redriven = Counter("heimdall_training_redriven_messages_total",
                                "Messages re-driven from a dead-letter queue and consumed again, by routing key and action",
                                ["routing_key", "action"], registry=self.registry)
        self.messages = Counter("heimdall_training_messages_total", "Consumed messages by action", ["action"],
                                registry=self.registry)

    def job_finished(self, outcome: AttemptEnd, elapsed_s: float) -> None:
        self.duration.labels(outcome=outcome.value).observe(elapsed_s)

    def refresh(self, store: JobStore) -> None:
        """Read the gauges from the store (shared by replicas, so every replica reports the same)."""
        counts = store.read.counts_by_status()
        for state in JobStatus:
            self.jobs.labels(state=state.value).set(counts.get(state.value, 0))
        self.queue_lag.set(store.read.oldest_queued_age_s() or 0.0)
        self.outbox_pending.set(store.read.pending_count())
        last = store.read.last_success_at()
        if last is not None:
            self.last_success.set(last.timestamp())

    def render(self) -> bytes:
        return generate_latest(self.registry)
