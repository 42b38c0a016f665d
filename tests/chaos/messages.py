"""The message faults of the chaos report: fuzz, storm, unroutable.

Fuzz: generated bad messages, published raw, must all be dead-lettered.

Hypothesis draws each message from one of six kinds: random bytes, wrong types, missing fields,
another event's routing key or type, bodies over 1 MiB, and valid ops requests from a user
outside the allow-list. The contract's own parser (`messages.parse_event`) is the oracle: a
drawn message it would accept is discarded (unless its sender is the point), and the reason it
gives is the reason the dead letter must carry.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from itertools import groupby

import aio_pika
import hypothesis
from hypothesis import HealthCheck, Phase, strategies as st

from messages import InvalidMessage, constants as wire, parse_event
from service.topology import event_message
from tests.chaos.event_log import OUTPUT_KEYS
from tests.chaos.lab import query
from tests.chaos.steps import announce, logged, recovery, wait_end, wait_until
from tests.support.broker import dead_letters, rabbitmqctl
from tests.support.service_stack import dataset_ready, training_requested

FUZZ_MESSAGES = 10_000
# A user of our own outside the ops allow-list: the suite's shared intruder is re-created by every test session.
INTRUDER, INTRUDER_PASSWORD = "heimdall-chaos-intruder", "chaos-intruder-pw"
DEAD_LETTER_QUEUES = ("heimdall.training.datasets.dead-letter", "heimdall.training.ops.dead-letter")
STRING_FIELDS = [("id",), ("source",), ("type",), ("specversion",), ("time",), ("data", "dataset_id"), ("data", "uri")]
INT_FIELDS = [("data", "version"), ("data", "sessions"), ("data", "labelled_sessions")]
NOT_A_STRING = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.lists(st.integers(), max_size=3),
                         st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
NOT_AN_INT = st.one_of(st.none(), st.from_regex(r"[a-z ]{1,12}", fullmatch=True), st.lists(st.integers(), max_size=3),
                       st.floats().filter(lambda f: not f.is_integer()), st.dictionaries(st.text(max_size=4),
                                                                                        st.integers(), max_size=2))


def fuzz_count(scale: float) -> int:
    return max(100, round(FUZZ_MESSAGES * scale))


@dataclass(frozen=True)
class Fuzzed:
    kind: str
    body: bytes
    routing_key: str
    user_id: str | None  # None: published without one
    expected: str  # the dead-letter reason the contract gives


def _ready() -> dict:
    return dataset_ready("fuzz-ds", 1, "s3://heimdall-datasets/fuzz-nowhere/")


def _set(event: dict, path: tuple[str, ...], value) -> dict:
    event = json.loads(json.dumps(event))
    target = event
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return event


_DELETE = object()


@st.composite
def _body(draw, kind: str) -> tuple[bytes, str]:
    base, key = _ready(), wire.DATASET_READY
    if kind == "random-bytes":
        return draw(st.binary(max_size=3000)), key
    if kind == "wrong-types":
        path = draw(st.sampled_from(STRING_FIELDS + INT_FIELDS))
        event = _set(base, path, draw(NOT_AN_INT if path in INT_FIELDS else NOT_A_STRING))
    elif kind == "missing-fields":
        event = _set(base, draw(st.sampled_from(STRING_FIELDS + INT_FIELDS + [("data",)])), _DELETE)
    elif kind == "other-event":
        event = _set(base, ("type",), draw(st.sampled_from([wire.TRAINING_REQUESTED_TYPE, "heimdall.dataset.ready.v2",
                                                            wire.MODEL_REGISTERED_TYPE])))
        key = draw(st.sampled_from([wire.DATASET_READY, wire.TRAINING_REQUESTED, wire.TRAINING_CANCEL]))
    else:  # huge
        event = _set(base, ("data", "pad"), "x" * draw(st.integers(wire.MAX_BODY_BYTES, wire.MAX_BODY_BYTES + 400_000)))
    return json.dumps(event).encode(), key


# Per mille: 300 random bytes, 250 wrong types, 200 missing fields, 95 other events, 150 bad user, 5 huge.
# Huge bodies sit in the middle of the table: Hypothesis draws the ends more often than the rest.
KINDS = (["random-bytes"] * 300 + ["wrong-types"] * 250 + ["missing-fields"] * 100 + ["huge"] * 5
         + ["missing-fields"] * 100 + ["other-event"] * 95 + ["bad-user"] * 150)


@st.composite
def fuzzed(draw) -> Fuzzed:
    kind = draw(st.sampled_from(KINDS))
    if kind == "bad-user":
        user = draw(st.sampled_from([INTRUDER, None]))
        body = json.dumps(training_requested("fuzz-ds", draw(st.integers(1, 5)))).encode()
        return Fuzzed(kind, body, wire.TRAINING_REQUESTED, user, "unauthorised")
    body, key = draw(_body(kind))
    try:
        parse_event(body, routing_key=key)
    except InvalidMessage as exc:
        return Fuzzed(kind, body, key, "guest", exc.reason)
    hypothesis.assume(False)  # a valid event is not a fuzz case


def generate(count: int, seed: int) -> list[Fuzzed]:
    found: list[Fuzzed] = []
    while len(found) < count:
        @hypothesis.seed(seed + len(found))
        @hypothesis.settings(max_examples=count - len(found), database=None, deadline=None, phases=[Phase.generate],
                             suppress_health_check=list(HealthCheck))
        @hypothesis.given(fuzzed())
        def collect(message: Fuzzed) -> None:
            found.append(message)

        collect()
    return found[:count]


async def _publish_all(vhost, items: list[tuple[bytes, str, str, str | None]]) -> None:
    login = lambda item: INTRUDER if item[3] == INTRUDER else "guest"  # noqa: E731
    for user, group in groupby(sorted(items, key=login), key=login):
        url = vhost.url(INTRUDER, INTRUDER_PASSWORD) if user == INTRUDER else vhost.url()
        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(wire.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
            group = list(group)
            for start in range(0, len(group), 200):
                await asyncio.gather(*(exchange.publish(
                    event_message(body, message_id=mid, event_type=None, **({"user_id": uid} if uid else {})),
                    routing_key=key) for body, key, mid, uid in group[start:start + 200]))


def publish_many(vhost, items: list[tuple[bytes, str, str, str | None]]) -> None:
    """(body, routing key, message id, user_id) each, over one confirmed channel per login."""
    asyncio.run(_publish_all(vhost, items))


class ReadyWatch(threading.Thread):
    """Asks /readyz twice a second until stopped; counts the answers that were not `ready`."""

    def __init__(self, service):
        super().__init__(daemon=True)
        self.service, self.done, self.not_ready, self.asked = service, threading.Event(), [], 0

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.asked += 1
            answer = self.service.get("/readyz")
            if not answer.startswith("ready"):
                self.not_ready.append(answer.strip()[:120])


def collect_dead_letters(url: str, wanted: int, timeout_s: float) -> dict[str, str | None]:
    reasons: dict[str, str | None] = {}
    deadline = time.monotonic() + timeout_s
    while len(reasons) < wanted and time.monotonic() < deadline:
        for queue in DEAD_LETTER_QUEUES:
            for delivery in dead_letters(url, queue):
                reasons[delivery.message_id] = delivery.headers.get("x-heimdall-reason")
        time.sleep(1)
    return reasons


def fuzz(lab, rng, trial, index: int):
    stack = lab.stack()
    service = stack.start("a")
    subprocess.run(["rabbitmqctl", "-q", "add_user", INTRUDER, INTRUDER_PASSWORD], capture_output=True, timeout=60)
    rabbitmqctl("set_permissions", "-p", stack.vhost.name, INTRUDER, ".*", ".*", ".*")
    messages = generate(fuzz_count(lab.scale), rng.randrange(2**32))
    print(f"fuzz: {Counter(m.kind for m in messages)}", flush=True)
    watch = ReadyWatch(service)
    watch.start()
    try:
        publish_many(stack.vhost, [(m.body, m.routing_key, f"fuzz-{i}", m.user_id) for i, m in enumerate(messages)])
        published = time.monotonic()
        reasons = collect_dead_letters(stack.vhost.url(), len(messages), 600)
        trial.recovery_s = time.monotonic() - published  # until the last one was dead-lettered
    finally:
        watch.done.set()
        watch.join()
    missing = [i for i in range(len(messages)) if f"fuzz-{i}" not in reasons]
    wrong = [(m.kind, m.expected, reasons[f"fuzz-{i}"]) for i, m in enumerate(messages)
             if f"fuzz-{i}" in reasons and reasons[f"fuzz-{i}"] != m.expected]
    trial.check(not missing, f"{len(missing)} of {len(messages)} not dead-lettered, e.g. "
                             f"{[messages[i].kind for i in missing[:5]]}")
    trial.check(not wrong, f"{len(wrong)} dead letters with another reason, e.g. {Counter(wrong).most_common(3)}")
    trial.check(not watch.not_ready, f"{len(watch.not_ready)}/{watch.asked} /readyz answers not ready: "
                                     f"{watch.not_ready[:2]}")
    trial.check(service.proc.poll() is None, "serve exited under the fuzz")
    trial.check(not stack.tap.events(), f"published besides the dead letters: {stack.tap.events()[:3]}")
    trial.check(query(stack, "select count(*) from jobs")[0][0] == 0, "a fuzzed message made a job")
    return stack


def storm(lab, rng, trial, index: int):
    stack = lab.stack()
    replicas = [stack.start("r1"), stack.start("r2")]
    event = dataset_ready("chaos-a", 1, lab.datasets["chaos-a"])
    events = [event] * 500 + [{**event, "id": str(uuid.uuid4())} for _ in range(500)]
    rng.shuffle(events)
    publish_many(stack.vhost, [(json.dumps(e).encode(), wire.DATASET_READY, e["id"], "guest") for e in events])
    stormed = time.monotonic()
    handled = lambda: sum(logged_count(r, ("accepted", "duplicate")) for r in replicas)  # noqa: E731
    trial.check(wait_until(lambda: handled() >= 1000, 300, 1.0), f"only {handled()} of 1000 handled")
    job = stack.tap.wait_for(wire.TRAINING_ACCEPTED, timeout_s=60)[0]["data"]["job_id"]
    trial.check(wait_end(stack, job), "the job did not end")
    trial.recovery_s = recovery(stack, job, stormed)
    return stack


def logged_count(service, events: tuple[str, ...]) -> int:
    return sum(line.get("event") in events for line in service.log_lines())


def unroutable(lab, rng, trial, index: int):
    stack = lab.stack(keys=tuple(k for k in OUTPUT_KEYS if k != wire.MODEL_REGISTERED))
    service = stack.start("a")
    job = announce(lab, stack)
    trial.check(wait_until(lambda: logged(service, "succeeded", job_id=job), 240, 0.5), "the job did not succeed")
    behind = announce(lab, stack, "chaos-b")  # the events after the unroutable one must not wait for it
    trial.check(wait_until(lambda: bool(stack.tap.events(wire.TRAINING_STARTED, job_id=behind)), 120, 0.5),
                "events behind the unroutable model.registered were held up")
    time.sleep(rng.uniform(5, 10))
    stack.tap.bind(wire.MODEL_REGISTERED)  # the inference service declares its queue
    bound = time.monotonic()
    trial.check(wait_until(lambda: bool(stack.tap.events(wire.MODEL_REGISTERED, job_id=job)), 120, 0.5),
                "model.registered never arrived once a queue was bound (lost)")
    trial.recovery_s = recovery(stack, job, bound)
    return stack
