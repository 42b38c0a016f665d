"""The fuzz row of the chaos report: generated bad messages, published raw, must all be dead-lettered.

Hypothesis draws each message from one of six kinds: random bytes, wrong types, missing fields,
another event's routing key or type, bodies over 1 MiB, and valid ops requests from a user
outside the allow-list. The contract's own parser (`messages.parse_event`) is the oracle: a
drawn message it would accept is discarded (unless its sender is the point), and the reason it
gives is the reason the dead letter must carry.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from itertools import groupby

import aio_pika
import hypothesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, strategies as st

from messages import InvalidMessage, constants as wire, parse_event
from service.topology import event_message
from tests.broker import INTRUDER, INTRUDER_PASSWORD, dead_letters
from tests.test_service import dataset_ready, training_requested

FUZZ_MESSAGES = 10_000
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
    engine = sa.create_engine(stack.env["HEIMDALL_JOB_STORE_URL"])
    with engine.connect() as conn:
        trial.check(conn.execute(sa.text("select count(*) from jobs")).scalar() == 0, "a fuzzed message made a job")
    engine.dispose()
    return stack
