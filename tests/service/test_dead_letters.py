"""`heimdall-training dead-letters list|redrive` against the real RabbitMQ (issue 23, point 3).

Dead letters of both kinds are made the way they arise: refused by the service's own consumer
(with `x-heimdall-reason`), and dead-lettered by RabbitMQ after its delivery limit (`x-death`).
Once the cause of a refusal is fixed (the dataset location allowed), re-driving it by reason makes
it a job, exactly once; re-driving by id reaches the work queue and is consumed; whatever matches
neither stays in its dead-letter queue, as it was.
"""

from __future__ import annotations

import asyncio
import uuid
from functools import partial

import aio_pika

from service.consumer import Action
from service.jobs.store import JobStore
from service.topology import DATASET_EVENTS, OPS_EVENTS, declare_topology
from tests.support.consuming import consumer_settings, consuming, job_of, wait_until
from tests.support.broker import dead_letters, publish
from tests.support.cli import run_cli
from tests.support.service_stack import dataset_ready


async def exhaust_delivery_limit(url: str, message_id: str) -> None:
    """Take the message from its work queue and give it back until RabbitMQ dead-letters it."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(DATASET_EVENTS.name, passive=True)
        dead = await channel.declare_queue(DATASET_EVENTS.dead_letter, passive=True)
        while True:
            message = await queue.get(no_ack=False, fail=False)
            if message is not None:
                assert message.message_id == message_id
                await message.nack(requeue=True)
                continue
            held = await dead.get(no_ack=False, fail=False)  # given back when the connection closes
            if held is not None:
                assert held.message_id == message_id
                return
            await asyncio.sleep(0.05)


def dead_letters_listed(url: str, tmp_path) -> dict[str, tuple[str, str, str]]:
    """`dead-letters list`, as message id -> (dead-letter queue, routing key, reason)."""
    done = run_cli(["dead-letters", "list"], tmp_path, timeout_s=60, HEIMDALL_AMQP_URL=url)
    assert done.returncode == 0, done.stderr
    listed, queue = {}, None
    for line in done.stdout.splitlines():
        if not line.startswith(" "):
            queue = line.split(":")[0]
        elif not line.split()[0] == "MESSAGE":
            message_id, routing_key, reason = line.split()[:3]
            listed[message_id] = (queue, routing_key, reason)
    return listed


def redrive(url: str, tmp_path, *flags: str) -> str:
    done = run_cli(["dead-letters", "redrive", *flags], tmp_path, timeout_s=60, HEIMDALL_AMQP_URL=url)
    assert done.returncode == 0, done.stderr
    assert '"event": "redriven"' in done.stderr  # the log line with the counts
    return done.stdout


def test_dead_letters_are_listed_with_their_reasons_and_redriven_once_by_reason_or_id(
        tmp_path, vhost, example_dataset, clean_env):
    url = vhost.url()
    store_url = f"sqlite:///{tmp_path}/jobs.db"
    store = JobStore(store_url)
    store.migrate()
    refusing = consumer_settings(tmp_path, url, store_url, tmp_path / "elsewhere")
    fixed = consumer_settings(tmp_path, url, store_url, example_dataset.parent).model_copy(
        update={"ops_allowed_users": ["guest"]})
    refused, exhausted = (dataset_ready("nw-italy-mini", 1, f"file://{example_dataset}") for _ in range(2))
    garbled_id, cancel = str(uuid.uuid4()), {**dataset_ready("x", 1, "file:///x"), "type": "heimdall.training.cancel.v1",
                                            "data": {"job_id": str(uuid.uuid4()), "reason": "test"}}

    async def refuse_them() -> None:
        async with consuming(refusing, store) as state:
            await asyncio.to_thread(publish, url, refused, "dataset.ready")
            await asyncio.to_thread(publish, url, b"{not json", "dataset.ready", message_id=garbled_id)
            await asyncio.to_thread(publish, url, cancel, "training.cancel", user_id="guest")

            async def all_refused() -> bool:
                return all(state.actions_on(i) == [Action.DEAD_LETTER] for i in (refused["id"], garbled_id, cancel["id"]))
            await wait_until(all_refused, "the consumer dead-letters all three")

    asyncio.run(declare(url))
    publish(url, exhausted, "dataset.ready")
    asyncio.run(exhaust_delivery_limit(url, exhausted["id"]))
    asyncio.run(refuse_them())

    datasets, ops = DATASET_EVENTS.dead_letter, OPS_EVENTS.dead_letter
    assert dead_letters_listed(url, tmp_path) == {
        refused["id"]: (datasets, "dataset.ready", "dataset-not-allowed"),
        garbled_id: (datasets, "dataset.ready", "malformed-json"),
        exhausted["id"]: (datasets, "dataset.ready", "delivery_limit"),
        cancel["id"]: (ops, "training.cancel", "unauthorised")}

    async def redrive_the_fixed_ones() -> None:
        async with consuming(fixed, store) as state:
            out = await asyncio.to_thread(redrive, url, tmp_path, "--reason", "dataset-not-allowed")
            assert f"redriven {refused['id']} (dataset-not-allowed)" in out and "redriven 1, not matched 3" in out
            job = await job_of(store, refused["id"])
            assert (job.dataset_id, job.dataset_version) == ("nw-italy-mini", 1)
            out = await asyncio.to_thread(redrive, url, tmp_path, "--id", exhausted["id"])
            assert "redriven 1, not matched 2" in out
            await wait_until(partial(handled, state, exhausted["id"]), "the re-driven trigger is consumed")
            assert state.actions_on(exhausted["id"]) == [Action.ACK]  # a duplicate of the job above: acknowledged
            assert state.actions_on(refused["id"]) == [Action.ACK]  # re-driven once, handled once
            # Re-driven by its own publisher (guest), an ops message keeps its user_id: now authorised, it
            # is refused for what it asks (no such job), not as unauthorised again.
            assert "redriven 1, not matched 1" in await asyncio.to_thread(redrive, url, tmp_path, "--reason",
                                                                            "unauthorised")
            await wait_until(partial(handled, state, cancel["id"]), "the re-driven cancel is consumed")

    asyncio.run(redrive_the_fixed_ones())
    left = {d.message_id: d for d in dead_letters(url, datasets) + dead_letters(url, ops)}
    assert set(left) == {garbled_id, cancel["id"]}  # the one never matched is as it was: body and reason
    assert left[garbled_id].body == b"{not json" and left[garbled_id].headers["x-heimdall-reason"] == "malformed-json"
    assert left[cancel["id"]].headers["x-heimdall-reason"] == "unknown-job"
    store.close()


async def handled(state, message_id: str) -> bool:
    return bool(state.actions_on(message_id))


async def declare(url: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        await declare_topology(await connection.channel())


def test_each_dead_letters_command_has_help_with_an_example(tmp_path):
    for action in ("list", "redrive"):
        done = run_cli(["dead-letters", action, "--help"], tmp_path, timeout_s=60)
        assert done.returncode == 0 and f"heimdall-training dead-letters {action}" in done.stdout.split("example")[1]
