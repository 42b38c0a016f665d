"""Champion moves as the inference service and ops see them, against a real `serve`, RabbitMQ,
PostgreSQL, SeaweedFS and `mlflow server`: every move of the `champion` alias, by a job's gate or by
`ops promote`, reaches an independent consumer (the tap, a queue of its own on heimdall.events) as
exactly one `model.champion-changed`; and the `models` commands show the versions the jobs made.

One stack for the module: a `dataset.ready` and a manual request on the same dataset with another
configuration make versions 1 and 2 (two tiny trainings), which every test here reads.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support.broker import dead_letters, publish
from tests.support.outsider import outsider
from tests.support.service_stack import Stack, dataset_ready, settled, training_requested

OPS_DEAD_LETTERS = "heimdall.training.ops.dead-letter"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server, mlflow_url, postgres, datasets):
    stack = Stack(tmp_path_factory.mktemp("champion"), s3_server, mlflow_url, postgres)
    try:
        stack.start()
        stack.publish(dataset_ready("svc-main", 1, datasets["svc-main"]), "dataset.ready")
        stack.tap.wait_for("model.registered", count=1)
        stack.publish(training_requested("svc-main", 1, overrides={"epochs": 2}), "training.requested")
        stack.tap.wait_for("model.registered", count=2)
        settled(stack)
        yield stack
    finally:
        stack.close()


def mlflow(stack: Stack):
    from mlflow import MlflowClient

    return MlflowClient(stack.env["HEIMDALL_MLFLOW_TRACKING_URI"])


def champion(stack: Stack) -> int:
    return int(mlflow(stack).get_model_version_by_alias(stack.env["HEIMDALL_MODEL_NAME"], "champion").version)


def promote(stack: Stack, version: int, event_id: str | None = None) -> dict:
    name = stack.env["HEIMDALL_MODEL_NAME"]
    return {"specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": "heimdall/ops",
            "type": "heimdall.model.promote.v1", "time": "2026-12-04T10:00:00Z",
            "data": {"model_name": name, "version": version, "reason": "test"}}


def cli(stack: Stack, *args: str):
    done = stack.cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_each_gate_promotion_publishes_one_champion_changed(stack):
    registered = [e["data"] for e in stack.tap.events("model.registered")]
    changed = [e["data"] for e in stack.tap.events("model.champion-changed")]

    promoted = [r for r in registered if r["promoted"]]
    assert [r["model_version"] for r in promoted][:1] == [1]  # the first version meets no champion
    assert [(c["version"], c["cause"], c["job_id"]) for c in changed] == [
        (r["model_version"], "gate", r["job_id"]) for r in promoted]
    assert [c["previous_version"] for c in changed] == [None, 1][:len(changed)]
    assert all(c["onnx"] == r["onnx"] and c["card_uri"] == r["card_uri"] for c, r in zip(changed, promoted))
    assert champion(stack) == changed[-1]["version"]
    delivered = [d for d in stack.tap.seen if d.routing_key == "model.champion-changed"]
    assert delivered[0].type == "heimdall.model.champion-changed.v1" and delivered[0].message_id
    shown = cli(stack, "jobs", "show", changed[0]["job_id"])  # the move is in its job's timeline too
    assert "  champion     version 1 (was none): champion gate: no champion yet" in shown


def test_models_list_show_and_compare_print_the_versions(stack):
    name, now = stack.env["HEIMDALL_MODEL_NAME"], champion(stack)

    listing = cli(stack, "models", "list").splitlines()
    assert listing[0] == f"{name}: 2 version(s)" and listing[1].split()[:3] == ["VERSION", "ALIASES", "DATASET"]
    rows = {int(line.split()[0]): line.split() for line in listing[2:]}
    assert sorted(rows) == [1, 2]
    aliases = {1: [], 2: ["candidate"]}  # an alias names one version: `candidate` the newest
    aliases[now].append("champion")
    assert {number: row[1] for number, row in rows.items()} == {n: ",".join(a) or "-" for n, a in aliases.items()}
    assert rows[1][2:4] == ["svc-main", "v1"] and rows[1][10:] == ["promoted"]  # the first meets no champion

    shown = cli(stack, "models", "show", "1")
    assert shown.startswith(f"{name} version 1  (aliases: {'champion' if now == 1 else 'none'})\n")
    assert "Trained on svc-main v1" in shown and "  gate         promoted: no champion yet" in shown
    assert "  model.onnx   s3://heimdall-models/" in shown and "  job          " in shown

    compared = cli(stack, "models", "compare", "2", "1").splitlines()
    assert compared[0].startswith(f"{name}: versions 1 and 2 on svc-main v1, test split (")
    assert compared[1].split() == ["version", "1", "version", "2"]
    median = compared[2].split()
    assert median[:2] == ["median", "error"] and median[3] == median[5] == "km"
    assert [line.split()[0] for line in compared[2:]] == ["median", "p90", "mean", "coverage", "coverage",
                                                           "coverage", "NLL", "trained"]


def test_ops_promote_moves_the_alias_and_one_champion_changed_reaches_an_independent_consumer(stack):
    before, name = champion(stack), stack.env["HEIMDALL_MODEL_NAME"]
    target = 3 - before  # the other version: a rollback when it is 1

    event_id = cli(stack, "ops", "promote", name, str(target), "--reason", "roll back by hand").strip()

    (changed,) = stack.tap.wait_for("model.champion-changed", trigger_id=event_id, timeout_s=120)
    data = changed["data"]
    assert (data["version"], data["previous_version"], data["cause"]) == (target, before, "ops")
    assert data["reason"] == "roll back by hand" and data["job_id"] is None
    assert changed["subject"] == f"{name}/{target}" and champion(stack) == target


def test_a_redelivered_promote_moves_nothing_twice(stack):
    before = champion(stack)
    first = promote(stack, 3 - before)
    stack.publish(first, "model.promote")
    stack.tap.wait_for("model.champion-changed", trigger_id=first["id"], timeout_s=120)
    mlflow(stack).set_registered_model_alias(stack.env["HEIMDALL_MODEL_NAME"], "champion", str(before))  # by hand

    stack.publish(first, "model.promote")  # the same message again
    after = promote(stack, 3 - before)  # handled after it: when its event is out, the redelivery was handled
    stack.publish(after, "model.promote")

    (moved,) = stack.tap.wait_for("model.champion-changed", trigger_id=after["id"], timeout_s=120)
    assert moved["data"]["previous_version"] == before  # the redelivery left the alias where the hand put it
    assert len(stack.tap.events("model.champion-changed", trigger_id=first["id"])) == 1


def test_a_promote_from_a_user_outside_the_allow_list_is_dead_lettered_with_its_reason(stack):
    before, event = champion(stack), promote(stack, 1)

    with outsider(stack.vhost.name) as (user, password):
        publish(stack.vhost.url(user, password), event, "model.promote", user_id=user)

    deadline, letters = time.monotonic() + 60, []
    while not letters:
        assert time.monotonic() < deadline, "no dead letter within 60 s"
        letters = [d for d in dead_letters(stack.vhost.url(), OPS_DEAD_LETTERS) if d.message_id == event["id"]]
        time.sleep(0.3)
    assert letters[0].headers["x-heimdall-reason"] == "unauthorised" and user in letters[0].headers["x-heimdall-detail"]
    assert champion(stack) == before and not stack.tap.events("model.champion-changed", trigger_id=event["id"])
