"""The faults of issue 8's chaos table: each sets up a stack, injects, and checks its own rule.

A fault function gets the lab, a seeded `random.Random`, the trial record and the trial index;
it returns the stack, which `python -m tests.chaos` then settles and audits (ended once, versions per key,
events lost, stuck jobs). Faults that touch the shared RabbitMQ node restore it in `finally`.
"""

from __future__ import annotations

import os
import signal
import time

from messages import constants as wire
from tests.chaos.lab import Lab, Trial, query
from tests.chaos.steps import (PHASES, announce, children, database_of, logged, long_training, reach_phase, ready_again,
                               recovery, revive, terminate_backends, training_child, wait_end,
                               wait_until)
from tests.support.broker import dead_letters, publishing_blocked, rabbitmqctl
from tests.support.service_stack import ServiceProcess, Stack, dataset_ready


def kill_9(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    stack = lab.stack()
    service = stack.start("a")
    job = announce(lab, stack)
    phase = PHASES[index % len(PHASES)]
    if phase == "publish":
        kill_mid_publish(lab, stack, service, job, rng, trial)
    else:
        reached = reach_phase(lab, stack, service, phase, job)
        time.sleep(rng.uniform(0, 0.2))
        service.stop(signal.SIGKILL)
        trial.check(reached, f"phase {phase} not reached before the job ended (killed later)")
    killed = time.monotonic()
    stack.start("a")
    trial.check(wait_end(stack, job), f"job {job} did not end after the restart (killed in {phase})")
    trial.recovery_s = recovery(stack, job, killed)
    return stack


def kill_mid_publish(lab: Lab, stack: Stack, service: ServiceProcess, job: str, rng, trial: Trial) -> None:
    """Kill serve while its outbox relay is publishing `model.registered`: from the moment the model is
    stored the broker holds every publish (its memory alarm), so the job succeeds, the relay's publish
    waits unconfirmed, and serve dies then. Left to timing, the relay wins the race (about 50 ms).
    The child is frozen while the alarm is raised: `rabbitmqctl` takes seconds on a loaded machine,
    in which an unfrozen child registered and the relay published (1 trial of 7 in a full run)."""
    trial.check(reach_phase(lab, stack, service, "register", job), "phase register not reached before the job ended")
    child = training_child(service)
    if child is not None:
        os.kill(child, signal.SIGSTOP)
    with publishing_blocked():
        if child is not None:
            os.kill(child, signal.SIGCONT)
        trial.check(wait_until(lambda: logged(service, "succeeded", job_id=job), 180, 0.05),
                    "the job did not succeed while publishing was held")
        time.sleep(rng.uniform(1.5, 2.5))  # past the relay's idle wait: it has taken the row and is publishing
        pending = query(stack, "select count(*) from outbox where job_id = :job and routing_key = :key "
                               "and published_at is null", job=job, key=wire.MODEL_REGISTERED)[0][0]
        trial.check(pending == 1, f"{pending} unpublished model.registered rows at the kill, not 1")
        service.stop(signal.SIGKILL)


def sigterm_resume(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    stack = lab.stack(HEIMDALL_DEFAULT_TRAINING=long_training(40))
    first = stack.start("a")
    job = announce(lab, stack)
    target = rng.randint(2, 5)
    epochs = lambda: [p["data"]["epoch"] for p in stack.tap.events(wire.TRAINING_PROGRESS, job_id=job)]  # noqa: E731
    trial.check(wait_until(lambda: max(epochs(), default=0) >= target, 180, 0.2), f"no epoch {target} reached")
    trial.check(first.stop(signal.SIGTERM) == 0, f"serve exited {first.proc.returncode} on SIGTERM")
    last_seen = max(epochs(), default=0)
    trial.check(logged(first, "requeued", job_id=job), "the job was not requeued at shutdown")
    restarted = time.monotonic()
    stack.start("a")
    trial.check(wait_end(stack, job), "the resumed job did not end")
    after = [d.json()["data"]["epoch"] for at, d in stack.tap.copies
             if at > restarted and d.routing_key == wire.TRAINING_PROGRESS and d.json()["data"]["job_id"] == job]
    trial.check(bool(after) and min(after) > last_seen,
                f"resumed at epoch {min(after, default=None)}; epoch {last_seen} was done before SIGTERM")
    trial.check(bool(stack.tap.events(wire.MODEL_REGISTERED, job_id=job)), "no model.registered after resume")
    trial.recovery_s = recovery(stack, job, restarted)
    return stack


def close_connections(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    stack = lab.stack()
    service = stack.start("a")
    job = announce(lab, stack)
    wait_until(lambda: bool(stack.tap.events(wire.TRAINING_PROGRESS, job_id=job)), 180, 0.2)
    closes = 1 if index % 2 == 0 else 3  # odd trials: several closes while progress events stream out
    for _ in range(closes):
        rabbitmqctl("close_all_connections", "--vhost", stack.vhost.name, "chaos: connections closed")
        time.sleep(rng.uniform(0.2, 1.0))
    closed = time.monotonic()
    trial.check(ready_again(service), "not ready again after the connections were closed")
    service = revive(stack, service, trial)
    trial.check(wait_end(stack, job), "the job did not end after the connections were closed")
    trial.recovery_s = recovery(stack, job, closed)
    return stack


def rabbit_restart(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    stack = lab.stack(HEIMDALL_DEFAULT_TRAINING=long_training(8))
    service = stack.start("a")
    job = announce(lab, stack)
    wait_until(lambda: bool(stack.tap.events(wire.TRAINING_PROGRESS, job_id=job)), 180, 0.2)
    down_s = rng.uniform(8, 15)
    stopped_at = db_now(stack)
    try:
        rabbitmqctl("stop_app")
        time.sleep(down_s)
    finally:  # the node is shared: it comes back whatever happened
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    restarted_at, restarted = db_now(stack), time.monotonic()
    trial.check(ready_again(service, 90), "not ready again after the broker came back")
    service = revive(stack, service, trial)
    trial.check(wait_end(stack, job), "the job did not end after the broker came back")
    decided = outbox_between(stack, stopped_at, restarted_at)
    seen = {e["id"] for e in stack.tap.events()}
    trial.check(bool(decided), f"no event was decided during the {down_s:.0f} s outage (nothing proven)")
    trial.check(all(i in seen for i in decided), f"decided during the outage, never published: "
                                                 f"{[i for i in decided if i not in seen]}")
    trial.recovery_s = recovery(stack, job, restarted)
    return stack


def db_now(stack: Stack):
    return query(stack, "select now() at time zone 'utc'")[0][0]


def outbox_between(stack: Stack, start, end) -> list[str]:
    return [r[0] for r in query(stack, "select id from outbox where created_at between :a and :b", a=start, b=end)]


def pg_terminate(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    stack = lab.stack()
    service = stack.start("a")
    job = announce(lab, stack)
    wait_until(lambda: bool(stack.tap.events(wire.TRAINING_PROGRESS, job_id=job)), 180, 0.2)
    database = database_of(stack)
    outage_end = time.monotonic() + rng.uniform(2, 4)
    second = dataset_ready("chaos-b", 1, lab.datasets["chaos-b"])
    stack.publish(second, wire.DATASET_READY)  # a trigger that arrives during the outage
    terminated = 0
    while time.monotonic() < outage_end:
        terminated += terminate_backends(database)
        time.sleep(0.2)
    trial.check(terminated > 0, f"no connection to {database} was there to terminate (nothing proven)")
    ended_at = time.monotonic()
    service = revive(stack, service, trial)
    trial.check(wait_end(stack, job), "the running job did not end after the outage")
    trial.check(wait_until(lambda: bool(stack.tap.events(wire.TRAINING_ACCEPTED, trigger_id=second["id"])), 120, 0.5),
                "the trigger sent during the outage was never accepted")
    dead = dead_letters(stack.vhost.url(), "heimdall.training.datasets.dead-letter")
    trial.check(not dead, f"dead-lettered during the outage: {[d.headers.get('x-heimdall-reason') for d in dead]}")
    trial.recovery_s = recovery(stack, job, ended_at)
    return stack


def dependency_down(which: str):
    """mlflow (or S3) stopped once the model is exported; trial 0 brings it back, trial 1 keeps it down."""

    def run(lab: Lab, rng, trial: Trial, index: int) -> Stack:
        recover = index % 2 == 0
        stack = lab.stack(MLFLOW_HTTP_REQUEST_MAX_RETRIES="2", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
                          HEIMDALL_RETRY_BACKOFF_S="8" if recover else "1")
        service = stack.start("a")
        job = announce(lab, stack)
        trial.check(reach_phase(lab, stack, service, "export", job), "the job ended before export")
        stop, start = (lab.stop_mlflow, lab.start_mlflow) if which == "mlflow" else (lab.stop_s3, lab.start_s3)
        stop()
        down = True
        try:
            failed = stack.tap.wait_for(wire.TRAINING_FAILED, job_id=job, timeout_s=240)
            if recover:
                start()
                down, back = False, time.monotonic()
                trial.check(wait_end(stack, job), "the retried job did not end")
                trial.check(bool(stack.tap.events(wire.MODEL_REGISTERED, job_id=job)), "no model after the retry")
                trial.check(failed[0]["data"]["retryable"], f"first failure not retryable: {failed[0]['data']}")
                trial.recovery_s = recovery(stack, job, back)
            else:
                trial.check(wait_end(stack, job), "no final training.failed")
                failed = stack.tap.events(wire.TRAINING_FAILED, job_id=job)
                got = [(f["data"]["attempt"], f["data"]["retryable"]) for f in failed]
                trial.check(got == [(1, True), (2, True), (3, False)], f"attempts/retryable were {got}")
                trial.check(not stack.tap.events(wire.MODEL_REGISTERED, job_id=job), "registered while down")
        finally:
            if down:
                start()
        return stack

    return run


def descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        kids = children(frontier.pop())
        found += kids
        frontier += kids
    return found


def freeze_replica(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    stack = lab.stack(HEIMDALL_DEFAULT_TRAINING=long_training(12))
    replicas = [stack.start("r1"), stack.start("r2")]
    job = announce(lab, stack)
    wait_until(lambda: bool(stack.tap.events(wire.TRAINING_PROGRESS, job_id=job)), 180, 0.2)
    owner = next(r for r in replicas if logged(r, "claimed", job_id=job))
    other = next(r for r in replicas if r is not owner)
    pids = [owner.proc.pid, *descendants(owner.proc.pid)]  # the whole replica: serve, its child, loaders
    frozen = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        trial.check(wait_until(lambda: logged(other, "claimed", job_id=job), 60, 0.2),
                    "the other replica never claimed the frozen replica's job")
        time.sleep(rng.uniform(0, 3))
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    trial.check(wait_end(stack, job), "the job did not end after the freeze")
    wait_until(lambda: logged(owner, "lost-claim", job_id=job) or owner.proc.poll() is not None, 60, 0.5)
    trial.check(not logged(owner, "succeeded", job_id=job), "the stale replica recorded a success")
    trial.recovery_s = recovery(stack, job, frozen)
    return stack
