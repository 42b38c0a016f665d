"""Faults of the job store and of time (issue 20): the store away longer than the old redelivery budget,
the store away while a success is recorded on the last attempt, a database that accepts connections
and never answers, a purge while a resume job is queued, and a replica whose clock is ahead by more
than `lease_s`."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

from messages import constants as wire
from service.consumer import REQUEUE_DELAY_S, TRANSIENT_RETRY_S
from service.topology import DELIVERY_LIMIT
from tests.chaos.child_faults import alive, freeze_at_aim
from tests.chaos.lab import DATASETS_ROOT, Lab, Skip, Trial, execute, query
from tests.chaos.steps import (announce, database_of, logged, long_training, psql, ready_again, recovery, revive,
                               terminate_backends, wait_end, wait_until)
from tests.support.broker import dead_letters
from tests.support.service_stack import Stack, dataset_ready, training_requested
from tests.support.stalling_proxy import StallingProxy

# Before issue 20 a trigger was retried TRANSIENT_RETRY_S per delivery, over DELIVERY_LIMIT + 1 deliveries,
# then dead-lettered: the outage outlasts that budget.
STORE_AWAY_S = (DELIVERY_LIMIT + 1) * (TRANSIENT_RETRY_S + REQUEUE_DELAY_S) + 20
DEAD_LETTER_QUEUES = ("heimdall.training.datasets.dead-letter", "heimdall.training.ops.dead-letter")
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def progressing(stack: Stack, job: str) -> bool:
    return wait_until(lambda: bool(stack.tap.events(wire.TRAINING_PROGRESS, job_id=job)), 180, 0.2)


def allow_connections(database: str, allowed: bool) -> None:
    psql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS {str(allowed).lower()}")


def store_away(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    """The job store's database refuses every connection for STORE_AWAY_S (the server itself stays up)
    while a job runs and three triggers arrive: one new dataset, a duplicate of the running job, and an
    ops request. Every one must become a job (or map to one) afterwards, and none be dead-lettered."""
    stack = lab.stack(HEIMDALL_DEFAULT_TRAINING=long_training(6), HEIMDALL_DATASET_ROOT_URI=DATASETS_ROOT)
    service = stack.start("a")
    running = announce(lab, stack)
    trial.check(progressing(stack, running), "the first job never reported progress")
    database = database_of(stack)
    allow_connections(database, False)
    lab.cleanups.append(lambda: allow_connections(database, True))  # whatever happens, the database comes back
    terminate_backends(database)
    away = time.monotonic()
    triggers = [(dataset_ready(name, 1, lab.datasets[name]), wire.DATASET_READY) for name in ("chaos-b", "chaos-a")]
    triggers.append((training_requested("chaos-a", 1, overrides={"epochs": 2, "patience": 2}), wire.TRAINING_REQUESTED))
    for trigger, key in triggers:
        stack.publish(trigger, key)
        time.sleep(rng.uniform(1, 10))
    trial.check(wait_until(lambda: logged(service, "intake paused"), 60, 0.5), "the intake never paused")
    trial.check(not service.get("/readyz").startswith("ready"), "ready while the job store refuses connections")
    time.sleep(max(0.0, away + STORE_AWAY_S - time.monotonic()))  # the outage is the fault: its length is the point
    allow_connections(database, True)
    back = time.monotonic()
    service = revive(stack, service, trial)
    ids = [t["id"] for t, _ in triggers]
    mapped = lambda: query(stack, "select event_id, job_id from processed_events where event_id in :ids "  # noqa: E731
                                  "and job_id is not null", ids=tuple(ids))
    trial.check(wait_until(lambda: len(mapped()) == len(ids), 180, 1.0),
                f"triggers that never became a job: {sorted(set(ids) - {r[0] for r in mapped()})}")
    for job in {running, *(r[1] for r in mapped())}:
        trial.check(wait_end(stack, job), f"job {job} did not end after the outage")
    dead = [d for queue in DEAD_LETTER_QUEUES for d in dead_letters(stack.vhost.url(), queue)]
    trial.check(not dead, f"dead-lettered: {[(d.message_id, d.headers.get('x-heimdall-reason')) for d in dead]}")
    print(f"  store away {back - away:.0f} s; triggers mapped to jobs: {len(mapped())}/{len(ids)}", flush=True)
    trial.recovery_s = recovery(stack, running, back)
    return stack


def store_at_success(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    """On the job's only attempt (max_attempts 1) the job store refuses connections from the moment its
    model version is complete until 5-20 s after the child has exited with its result: the success
    must be recorded once the store answers, never turned into a failure."""
    stack = lab.stack(HEIMDALL_MAX_ATTEMPTS="1")
    service = stack.start("a")
    job = announce(lab, stack)
    frozen = freeze_at_aim(lab, stack, service, job, "completed", trial)
    if frozen is None:
        return stack
    pid, _ = frozen
    database = database_of(stack)
    allow_connections(database, False)
    lab.cleanups.append(lambda: allow_connections(database, True))
    terminate_backends(database)
    os.kill(pid, signal.SIGCONT)
    trial.check(wait_until(lambda: not alive(pid), 60, 0.1), "the child did not exit with its result")
    trial.check(wait_until(lambda: logged(service, "record retry", job_id=job), 30, 0.2),
                "serve never tried to record the outcome while the store was away")
    time.sleep(rng.uniform(5, 20))
    allow_connections(database, True)
    back = time.monotonic()
    trial.check(wait_end(stack, job), "the job did not end once the store answered")
    registered = stack.tap.events(wire.MODEL_REGISTERED, job_id=job)
    failed = [f["data"] for f in stack.tap.events(wire.TRAINING_FAILED, job_id=job)]
    trial.check(bool(registered) and not failed, f"a registered model ended in {failed or 'nothing'}")
    trial.recovery_s = recovery(stack, job, back)
    return stack


def stalled_store(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    """serve reaches PostgreSQL through a proxy that, for a while, accepts connections and never answers
    (the connections it froze stay dead). /readyz must say unready during it and ready after it."""
    proxy = StallingProxy()
    lab.cleanups.append(proxy.close)
    stack = lab.stack(HEIMDALL_DEFAULT_TRAINING=long_training(8))
    direct = stack.env["HEIMDALL_JOB_STORE_URL"]
    stack.env["HEIMDALL_JOB_STORE_URL"] = proxy.url(database_of(stack))
    try:
        service = stack.start("a")
    finally:
        stack.env["HEIMDALL_JOB_STORE_URL"] = direct  # the audit reads the database directly
    job = announce(lab, stack)
    trial.check(progressing(stack, job), "the job never reported progress")
    proxy.stall()
    stalled = time.monotonic()
    second = dataset_ready("chaos-b", 1, lab.datasets["chaos-b"])
    stack.publish(second, wire.DATASET_READY)  # a trigger that arrives during the stall
    trial.check(wait_until(lambda: not service.get("/readyz").startswith("ready"), 30, 0.5),
                "still ready 30 s into the stall")
    unready_after = time.monotonic() - stalled
    time.sleep(rng.uniform(15, 30))
    trial.check(not service.get("/readyz").startswith("ready"), "ready again while the database still stalls")
    trial.check(not service.get("/healthz").startswith("error"), "/healthz did not answer during the stall")
    proxy.resume()
    resumed = time.monotonic()
    trial.check(ready_again(service, 120), "not ready within 120 s of the database answering again")
    ready_after = time.monotonic() - resumed
    service = revive(stack, service, trial)
    trial.check(wait_end(stack, job), "the running job did not end after the stall")
    trial.check(wait_until(lambda: bool(stack.tap.events(wire.TRAINING_ACCEPTED, trigger_id=second["id"])), 120, 0.5),
                "the trigger sent during the stall was never accepted")
    print(f"  unready {unready_after:.1f} s into the stall, ready {ready_after:.1f} s after it", flush=True)
    trial.recovery_s = recovery(stack, job, resumed)
    return stack


def purge_now(stack: Stack):
    """The retention purge serve runs every purge_interval_s, run now with this serve's settings."""
    from foundation.settings import Settings
    from service.jobs.store import JobStore
    from service.retention import purge

    store = JobStore(stack.env["HEIMDALL_JOB_STORE_URL"], create=False)
    try:
        settings = Settings(state_dir=stack.tmp / "state-a", job_store_url=stack.env["HEIMDALL_JOB_STORE_URL"])
        return purge(store, settings)
    finally:
        store.close()


def purge_while_queued(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    """A finished job older than the retention, and a resume of it queued behind a running job: the
    purge must keep the checkpoint the resume needs, and the resume must go on from it."""
    stack = lab.stack()
    service = stack.start("a")
    first = announce(lab, stack)
    trial.check(wait_end(stack, first) and bool(stack.tap.events(wire.MODEL_REGISTERED, job_id=first)),
                "the first job did not succeed")
    execute(stack, "update jobs set finished_at = finished_at - interval '60 days' where id = :job", job=first)
    blocker = announce(lab, stack, "chaos-b")
    trial.check(wait_until(lambda: logged(service, "claimed", job_id=blocker), 120, 0.2), "the second job never ran")
    request = training_requested("chaos-a", 1, resume_job_id=first, overrides={"epochs": 5, "patience": 5})
    stack.publish(request, wire.TRAINING_REQUESTED)
    resume = stack.tap.wait_for(wire.TRAINING_ACCEPTED, trigger_id=request["id"], timeout_s=60)[0]["data"]["job_id"]
    status = query(stack, "select status from jobs where id = :job", job=resume)[0][0]
    purged = purge_now(stack)
    purged_at = time.monotonic()
    checkpoint = stack.tmp / "state-a" / "checkpoints" / first / "last.ckpt"
    trial.check(status == "queued", f"the resume job was {status} at the purge, not queued (nothing proven)")
    trial.check(purged.jobs == 0 and checkpoint.is_file(), f"the purge took the queued resume's checkpoint: {purged}")
    trial.check(wait_end(stack, resume), "the resume job did not end")
    epochs = [p["data"]["epoch"] for p in stack.tap.events(wire.TRAINING_PROGRESS, job_id=resume)]
    trial.check(bool(stack.tap.events(wire.MODEL_REGISTERED, job_id=resume)), "the resume job registered no model")
    trial.check(bool(epochs) and min(epochs) > 3, f"the resume job reported epochs {epochs}: not from epoch 3")
    trial.check(wait_end(stack, blocker), "the second job did not end")
    later = purge_now(stack)  # with the resume done, the old job goes: the purge was able to all along
    trial.check(later.jobs == 1 and not checkpoint.exists(), f"the old job outlived its last reader: {later}")
    trial.recovery_s = recovery(stack, resume, purged_at)
    return stack


def clock_ahead(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    """A second replica whose clock (libfaketime) is ahead by 10-20 × lease_s joins while the first runs
    a job, then takes the next one. No replica may take a job whose lease another holds."""
    if not FAKETIME_LIB.is_file():
        raise Skip("libfaketime is not installed (apt-get install faketime); leases on the database's clock "
                   "are covered by tests/service/jobs/test_leases.py")
    stack = lab.stack(HEIMDALL_DEFAULT_TRAINING=long_training(8))
    honest = stack.start("honest")
    first = announce(lab, stack)
    trial.check(wait_until(lambda: logged(honest, "claimed", job_id=first), 60, 0.2), "the first replica never claimed")
    ahead_s = round(float(stack.env["HEIMDALL_LEASE_S"]) * rng.uniform(10, 20))
    faked = {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": f"+{ahead_s}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    stack.env.update(faked)
    try:
        ahead = stack.start("ahead")
    finally:
        for key in faked:
            del stack.env[key]
    skew = clock_of(ahead) - time.time()
    trial.check(skew > ahead_s - 5, f"the second replica's clock is {skew:.0f} s ahead, not {ahead_s} s")
    second = announce(lab, stack, "chaos-b")
    for job in (first, second):
        trial.check(wait_end(stack, job), f"job {job} did not end")
    claims = {job: [r.log.name for r in (honest, ahead) for line in r.log_lines()
                    if line.get("event") == "claimed" and line.get("job_id") == job] for job in (first, second)}
    trial.check(all(len(c) == 1 for c in claims.values()), f"claims per job (each must be claimed once): {claims}")
    failed = [f["data"] for f in stack.tap.events(wire.TRAINING_FAILED)]
    trial.check(not failed, f"failures: {failed}")
    print(f"  replica clock {skew:.0f} s ahead (lease {stack.env['HEIMDALL_LEASE_S']} s); claims {claims}", flush=True)
    return stack


def clock_of(service) -> float:
    """The wall clock of a serve that has just started: the time stamp of its last log line ("serving")."""
    stamp = [line["ts"] for line in service.log_lines() if "ts" in line][-1]
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
