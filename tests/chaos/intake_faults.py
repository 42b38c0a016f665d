"""Faults of what comes in and goes out (issue 20): a downstream queue at its length limit with
`reject-publish`, a late older `dataset.ready`, and messages whose ids and fields PostgreSQL cannot store."""

from __future__ import annotations

import asyncio
import subprocess
import time

import aio_pika

from messages import constants as wire
from tests.chaos.lab import Lab, Trial, query
from tests.chaos.messages import collect_dead_letters
from tests.chaos.steps import announce, logged, recovery, wait_end, wait_until
from tests.support.broker import _drain
from tests.support.service_stack import Stack, dataset_ready, training_requested

FULL_QUEUE = "chaos-downstream-full"  # what another service declares, at its length limit


async def _declare_full(url: str, routing_key: str) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(wire.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(FULL_QUEUE, durable=True, arguments={
            "x-max-length": 1, "x-overflow": "reject-publish"})
        await queue.bind(exchange, routing_key=routing_key)
        await channel.default_exchange.publish(aio_pika.Message(b"filler"), routing_key=FULL_QUEUE)


def unpublished(stack: Stack, job: str, key: str) -> bool:
    return bool(query(stack, "select count(*) from outbox where job_id = :job and routing_key = :key "
                             "and published_at is null", job=job, key=key)[0][0])


def published(stack: Stack, job: str, key: str) -> bool:
    return bool(query(stack, "select count(*) from outbox where job_id = :job and routing_key = :key "
                             "and published_at is not null", job=job, key=key)[0][0])


def full_queue(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    """A queue bound to model.registered holds one message and rejects the rest: the broker nacks every
    model.registered. The outbox must keep publishing the other events, and deliver each
    model.registered to that queue once it is drained."""
    stack = lab.stack()
    asyncio.run(_declare_full(stack.vhost.url(), wire.MODEL_REGISTERED))
    service = stack.start("a")
    first = announce(lab, stack)
    trial.check(wait_until(lambda: logged(service, "nacked", routing_key=wire.MODEL_REGISTERED), 240, 0.5),
                "model.registered was never nacked (the queue was not full?)")
    second = announce(lab, stack, "chaos-b")
    trial.check(wait_until(lambda: published(stack, second, wire.TRAINING_STARTED), 120, 0.5),
                "the second job's training.started was not published behind the nacked model.registered")
    trial.check(unpublished(stack, first, wire.MODEL_REGISTERED), "the first model.registered left the outbox "
                                                                  "while the queue was full")
    trial.check(wait_until(lambda: logged(service, "succeeded", job_id=second), 240, 0.5),
                "the second job did not succeed")
    time.sleep(rng.uniform(0, 10))
    drained, delivered = time.monotonic(), {}
    while time.monotonic() - drained < 400 and len(delivered) < 2:  # the reader catches up; refused rows back off
        for copy in asyncio.run(_drain(stack.vhost.url(), FULL_QUEUE, None)):
            if copy.routing_key == wire.MODEL_REGISTERED:
                delivered.setdefault(copy.json()["data"]["job_id"], copy.json()["id"])
        time.sleep(0.5)
    trial.check(set(delivered) == {first, second}, f"model.registered reached the drained queue for {delivered}")
    trial.check(not unpublished(stack, first, wire.MODEL_REGISTERED) and not unpublished(
        stack, second, wire.MODEL_REGISTERED), "a model.registered is still in the outbox after draining")
    print(f"  nacks logged: {sum(line.get('event') == 'nacked' for line in service.log_lines())}; "
          f"drained in {time.monotonic() - drained:.0f} s", flush=True)
    trial.recovery_s = recovery(stack, first, drained)
    return stack


def late_older(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    """dataset.ready for v1 arrives after v2's job (even trials: after it succeeded; odd: while it runs).
    No job may train v1, and the champion stays on v2's model."""
    from tests.chaos.child_faults import mlflow_client

    stack = lab.stack()
    service = stack.start("a")
    newer = dataset_ready("chaos-a", 2, lab.dataset("chaos-a", 2))
    stack.publish(newer, wire.DATASET_READY)
    job = stack.tap.wait_for(wire.TRAINING_ACCEPTED, trigger_id=newer["id"], timeout_s=60)[0]["data"]["job_id"]
    if index % 2 == 0:
        trial.check(wait_end(stack, job) and bool(stack.tap.events(wire.MODEL_REGISTERED, job_id=job)),
                    "v2's job did not succeed")
    else:
        trial.check(wait_until(lambda: bool(stack.tap.events(wire.TRAINING_STARTED, job_id=job)), 120, 0.5),
                    "v2's job never started")
    older = dataset_ready("chaos-a", 1, lab.dataset("chaos-a", 1))
    stack.publish(older, wire.DATASET_READY)
    late = time.monotonic()
    trial.check(wait_until(lambda: logged(service, "duplicate", event_id=older["id"], job_id=job), 60, 0.5),
                "the late v1 trigger was not answered with v2's job")
    trial.check(wait_end(stack, job), "v2's job did not end")
    v1_jobs = query(stack, "select count(*) from jobs where dataset_id = 'chaos-a' and dataset_version = 1")[0][0]
    trial.check(v1_jobs == 0 and not stack.tap.events(wire.TRAINING_ACCEPTED, trigger_id=older["id"]),
                f"{v1_jobs} job(s) for the late v1")
    name = stack.env["HEIMDALL_MODEL_NAME"]
    champion = mlflow_client(stack).get_model_version_by_alias(name, "champion")
    registered = stack.tap.events(wire.MODEL_REGISTERED, job_id=job)
    trial.check(bool(registered) and int(champion.version) == registered[0]["data"]["model_version"],
                f"the champion is version {champion.version} (job {champion.tags.get('job_id')}), not v2's model")
    trial.recovery_s = recovery(stack, job, late)
    return stack


def unstorable_cases(lab: Lab) -> dict[str, tuple[dict, str, str | None]]:
    """name -> (event, routing key, the dead letter's reason; None: a control the store must keep)."""
    ready = lambda name="chaos-a", **envelope: {**dataset_ready(name, 1, lab.datasets[name]), **envelope}  # noqa: E731
    with_data = lambda event, **data: {**event, "data": {**event["data"], **data}}  # noqa: E731
    cancel = {**training_requested("chaos-a", 1), "type": wire.TRAINING_CANCEL_TYPE,
              "data": {"job_id": "job\x00id", "reason": "chaos"}}
    return {
        "id of 300 characters": (ready(id="i" * 300), wire.DATASET_READY, "invalid-envelope"),
        "id of 256 two-byte characters": (ready(id="é" * 256), wire.DATASET_READY, "invalid-envelope"),
        "NUL in the id": (ready(id="chaos\x00nul"), wire.DATASET_READY, "invalid-envelope"),
        "NUL in the source": (ready(source="heimdall/\x00acquisition"), wire.DATASET_READY, "invalid-envelope"),
        "NUL in the subject": (ready(subject="chaos-a/\x00v1"), wire.DATASET_READY, "invalid-envelope"),
        "NUL in data.uri": (with_data(ready(), uri=lab.datasets["chaos-a"] + "\x00"), wire.DATASET_READY,
                            "invalid-data"),
        "NUL in an ops reason": (training_requested("chaos-a", 1, reason="why\x00not"), wire.TRAINING_REQUESTED,
                                 "invalid-data"),
        "NUL in a cancel's job_id": (cancel, wire.TRAINING_CANCEL, "invalid-data"),
        "id of 255 characters (kept)": (ready(id="k" * 255), wire.DATASET_READY, None),
        "id of 255 two-byte characters (kept)": (ready("chaos-b", id="é" * 255), wire.DATASET_READY, None),
    }


def queued_messages(stack: Stack) -> int:
    """Messages still in the work queues, delivered or not."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", stack.vhost.name, "name", "messages"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.startswith("heimdall.training.")]
    return sum(int(count) for name, count in rows if not name.endswith(".dead-letter"))


def unstorable(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    """Valid messages the job store cannot keep (an id over 255 characters, a NUL in a text): each must be
    dead-lettered with its reason at the first delivery, never requeued; two controls of 255 characters
    are kept and trained."""
    stack = lab.stack()
    service = stack.start("a")
    cases = unstorable_cases(lab)
    for i, (name, (event, key, _)) in enumerate(cases.items()):
        stack.publish(event, key, message_id=f"unstorable-{i}")  # the AMQP id: a short string, whatever the event's
    sent = time.monotonic()
    refused = {f"unstorable-{i}": (name, reason) for i, (name, (_, _, reason)) in enumerate(cases.items()) if reason}
    reasons = collect_dead_letters(stack.vhost.url(), len(refused), 120)
    trial.recovery_s = time.monotonic() - sent  # until the last refusal was dead-lettered
    wrong = {refused[m][0]: got for m, got in reasons.items() if m in refused and got != refused[m][1]}
    missing = [refused[m][0] for m in set(refused) - set(reasons)]
    trial.check(set(reasons) == set(refused), f"not dead-lettered: {missing}; unexpected: "
                                              f"{sorted(set(reasons) - set(refused))}")
    trial.check(not wrong, f"dead-lettered with another reason: {wrong}")
    requeued = [line for line in service.log_lines() if line.get("event") in ("requeued", "retrying")]
    trial.check(not requeued, f"requeued or retried: {[(r.get('event_id'), r.get('detail')) for r in requeued][:3]}")
    trial.check(wait_until(lambda: queued_messages(stack) == 0, 60, 1.0), "messages left in the work queues")
    kept = [event["id"] for event, _, reason in cases.values() if reason is None]
    for event_id in kept:
        accepted = stack.tap.wait_for(wire.TRAINING_ACCEPTED, trigger_id=event_id, timeout_s=60)[0]["data"]["job_id"]
        trial.check(wait_end(stack, accepted), f"the job of a {len(event_id)}-character id did not end")
    jobs = query(stack, "select count(*) from jobs")[0][0]
    trial.check(jobs == len(kept), f"{jobs} jobs, not the {len(kept)} controls")
    print(f"  dead-letter reasons: {sorted(set(reasons.values()))}", flush=True)
    return stack
