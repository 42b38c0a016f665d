"""`model.promote` through the consumer, against a real RabbitMQ, `mlflow server` and S3: the alias
moves once per promote event, the move and its `model.champion-changed` are recorded together, and
a promote that must not or cannot be obeyed is dead-lettered with its reason.

The versions promoted here are made by hand (an MLflow version tagged complete and its model.json
in the models store), not trained: a promote reads nothing else of a version, and training two
models per test would only slow the test down.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import aio_pika
import pytest

from foundation.object_store import open_store
from foundation.settings import SETTINGS_ENV, S3Settings, Settings
from messages import ModelChampionChanged, parse_event
from service.consumer import Action, Consumer
from service.jobs.store import JobStore
from service.topology import DETAIL_HEADER, OPS_EVENTS, REASON_HEADER, declare_topology
from tests.support.broker import Vhost, dead_letters
from tests.support.jobs import VALID_RESULT, accept
from tests.support.outsider import outsider


@pytest.fixture(scope="module")
def vhost():
    vhost = Vhost()
    yield vhost
    vhost.close()


@pytest.fixture
def settings(tmp_path, vhost, s3_server, mlflow_url) -> Settings:
    name = f"promote-{uuid.uuid4().hex[:6]}"
    return Settings(state_dir=tmp_path / "state", amqp_url=vhost.url(), mlflow_tracking_uri=mlflow_url,
                    model_name=name, models_uri=f"s3://heimdall-models/{name}", ops_allowed_users=["guest"],
                    s3=S3Settings(endpoint_url=s3_server.endpoint_url, access_key_id=s3_server.access_key_id,
                                  secret_access_key=s3_server.secret_access_key), http_port=0)


@pytest.fixture
def store(settings):
    store = JobStore(settings.job_store_url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def mlflow(settings):
    """A client of the MLflow server, whose model (the settings') has three complete versions, version 1
    champion (as a first job leaves it)."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri)
    models = open_store(settings.models_uri, settings.s3.credentials())
    client.create_registered_model(settings.model_name)
    for number in (1, 2, 3):
        onnx = f"onnx bytes of version {number}".encode()
        card = {"model_version": number, "onnx": {"sha256": hashlib.sha256(onnx).hexdigest(), "bytes": len(onnx)}}
        models.write_bytes(f"{settings.model_name}/{number}/model.onnx", onnx)
        models.write_bytes(f"{settings.model_name}/{number}/model.json", json.dumps(card).encode())
        client.create_model_version(settings.model_name, f"s3://mlflow/artifacts/by-hand/{number}/model",
                                    tags={"registration": "complete"})
    client.set_registered_model_alias(settings.model_name, "champion", "1")
    return client


def champion(client, name: str) -> int:
    return int(client.get_model_version_by_alias(name, "champion").version)


def promote_event(name: str, version, event_id: str | None = None) -> dict:
    return {"specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": "heimdall/ops",
            "type": "heimdall.model.promote.v1", "time": "2026-12-04T10:00:00Z", "subject": f"{name}/{version}",
            "data": {"model_name": name, "version": version, "reason": "roll back: v3 misplaces the repeater"}}


def handle(settings: Settings, store: JobStore, body: dict, user: tuple[str, str] = ("guest", "guest")) -> Action:
    """Publish `body` as `user` (user, password), setting its user_id as the ops command does, take it
    from the ops queue and hand it to the consumer; its Action."""
    url = settings.amqp_url.get_secret_value().replace("guest:guest", ":".join(user))

    async def main() -> Action:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            queues = await declare_topology(channel)
            exchange = await channel.get_exchange("heimdall.events")
            await exchange.publish(aio_pika.Message(json.dumps(body).encode(), message_id=body["id"], user_id=user[0]),
                                   routing_key="model.promote", mandatory=True)
            message = await queues[OPS_EVENTS.name].get(timeout=5)
            return await Consumer(settings, store, channel, lambda: None, lambda job_id: None).handle(message,
                                                                                                      OPS_EVENTS)

    return asyncio.run(asyncio.wait_for(main(), 120))


def announced(store: JobStore) -> list[ModelChampionChanged]:
    """The champion-changed events waiting in the outbox, oldest first."""
    return [parse_event(row.body.encode()).data for row in store.read.pending_messages()
            if row.routing_key == "model.champion-changed"]


def test_a_promote_moves_the_alias_and_records_one_champion_changed(settings, store, mlflow):
    event = promote_event(settings.model_name, 2)

    assert handle(settings, store, event) is Action.ACK

    assert champion(mlflow, settings.model_name) == 2
    (changed,) = announced(store)
    assert (changed.version, changed.previous_version, changed.cause) == (2, 1, "ops")
    assert changed.trigger_id == event["id"] and changed.job_id is None and changed.reason == event["data"]["reason"]
    models = open_store(settings.models_uri, settings.s3.credentials())
    assert changed.onnx.uri == models.uri_of(f"{settings.model_name}/2/model.onnx")
    assert changed.onnx.sha256 == hashlib.sha256(b"onnx bytes of version 2").hexdigest()
    assert changed.card_uri == models.uri_of(f"{settings.model_name}/2/model.json")


def test_a_rollback_to_an_older_version_is_a_move_like_any_other(settings, store, mlflow):
    mlflow.set_registered_model_alias(settings.model_name, "champion", "3")

    assert handle(settings, store, promote_event(settings.model_name, 1)) is Action.ACK

    assert champion(mlflow, settings.model_name) == 1
    assert [(c.version, c.previous_version) for c in announced(store)] == [(1, 3)]


def test_a_redelivered_promote_moves_nothing_twice(settings, store, mlflow):
    event = promote_event(settings.model_name, 2)
    assert handle(settings, store, event) is Action.ACK
    mlflow.set_registered_model_alias(settings.model_name, "champion", "3")  # moved on since, by hand

    assert handle(settings, store, event) is Action.ACK  # the same message id again

    assert champion(mlflow, settings.model_name) == 3
    assert len(announced(store)) == 1


def test_a_move_whose_record_was_lost_is_announced_once_and_not_made_again(settings, store, mlflow):
    """The child moved the alias, then the service died before recording it: the redelivered promote
    finds the move by the version's tags, announces it with the champion it replaced, and moves nothing."""
    event = promote_event(settings.model_name, 2)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")},
           SETTINGS_ENV: settings.serialised()}
    done = subprocess.run([sys.executable, "-m", "training.promote", "--version", "2", "--event-id", event["id"],
                           "--reason", "r"], env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout)["outcome"] == "moved", done.stderr

    assert handle(settings, store, event) is Action.ACK

    # version 1, not 2: the move was recognised as this event's, not taken for a champion already in place
    assert [(c.version, c.previous_version) for c in announced(store)] == [(2, 1)]
    assert champion(mlflow, settings.model_name) == 2


def test_a_champion_whose_move_a_running_job_has_not_announced_yet_is_not_moved_until_it_has(
        settings, store, mlflow, caplog):
    """Version 1 became champion by the gate of a job still running (its worker records the move a
    moment later): a promote now would be announced before that move. It waits, and then goes ahead."""
    accept(store)
    job = store.claim_next("w", 60)
    mlflow.set_model_version_tag(settings.model_name, "1", "job_id", job.id)
    with ThreadPoolExecutor(1) as background:
        handled = background.submit(handle, settings, store, promote_event(settings.model_name, 2))
        deadline = time.monotonic() + 60
        while not [r for r in caplog.records if "not announced yet" in getattr(r, "fields", {}).get("detail", "")]:
            assert time.monotonic() < deadline and not handled.done(), "the promote did not wait"
            time.sleep(0.2)
        assert champion(mlflow, settings.model_name) == 1
        store.finish_succeeded(job.id, "w", VALID_RESULT)

        assert handled.result() is Action.ACK
    assert [(c.version, c.previous_version) for c in announced(store)] == [(2, 1)]


def test_promoting_the_champion_moves_nothing_and_announces_nothing(settings, store, mlflow):
    assert handle(settings, store, promote_event(settings.model_name, 1)) is Action.ACK

    assert champion(mlflow, settings.model_name) == 1 and announced(store) == []


@pytest.mark.parametrize(("case", "reason"), [
    ("outside the allow-list", "unauthorised"), ("unknown version", "unknown-version"),
    ("another model", "unknown-model"), ("no model registered yet", "unknown-model"),
])
def test_a_promote_that_cannot_be_obeyed_is_dead_lettered_with_its_reason(settings, store, mlflow, vhost, case,
                                                                         reason):
    name, version = settings.model_name, 2
    if case == "unknown version":
        version = 9
    elif case == "another model":
        name = "someone-elses-model"
    elif case == "no model registered yet":
        mlflow.delete_registered_model(settings.model_name)
    dead_letters(settings.amqp_url.get_secret_value(), OPS_EVENTS.dead_letter)  # what earlier cases left

    with outsider(vhost.name) as outside:
        action = handle(settings, store, promote_event(name, version),
                        user=outside if case == "outside the allow-list" else ("guest", "guest"))

    assert action is Action.DEAD_LETTER
    (letter,) = dead_letters(settings.amqp_url.get_secret_value(), OPS_EVENTS.dead_letter)
    assert letter.headers[REASON_HEADER] == reason and letter.headers[DETAIL_HEADER]
    assert announced(store) == []
    if case != "no model registered yet":
        assert champion(mlflow, settings.model_name) == 1
