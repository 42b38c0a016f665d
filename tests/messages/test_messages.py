"""The event contract (shared/contracts/events.md), as the `messages` package implements it."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

import messages
from messages import constants as c
from messages import schema
from messages import (
    BY_TYPE,
    CONSUMED,
    PUBLISHED,
    DatasetReady,
    Event,
    InvalidMessage,
    ModelChampionChanged,
    ModelPromote,
    ModelRegistered,
    TrainingAccepted,
    TrainingCancel,
    TrainingFailed,
    TrainingOverrides,
    TrainingProgress,
    TrainingRequested,
    TrainingStarted,
    make_event,
    parse_event,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "contracts" / "examples" / "events"
EXPECTED_MODEL = {
    "dataset.ready.json": DatasetReady,
    "training.requested.json": TrainingRequested,
    "training.cancel.json": TrainingCancel,
    "model.registered.json": ModelRegistered,
    "model.promote.json": ModelPromote,
    "model.champion-changed.json": ModelChampionChanged,
}


def example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


def body(event: dict) -> bytes:
    return json.dumps(event).encode()


def requested(**data) -> bytes:
    event = example("training.requested.json")
    event["data"] = {"dataset_id": "nw-italy-mini", "version": 1, "reason": "test", **data}
    return body(event)


def refusal(raw: bytes, **kwargs) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        parse_event(raw, **kwargs)
    return caught.value


# ---- the neighbours' examples -----------------------------------------------------------


def test_every_example_has_an_expected_model():
    assert sorted(p.name for p in EXAMPLES.glob("*.json")) == sorted(EXPECTED_MODEL)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODEL))
def test_each_example_parses_into_its_typed_model(name):
    model = EXPECTED_MODEL[name]
    event = parse_event((EXAMPLES / name).read_bytes(), routing_key=model.ROUTING_KEY)
    assert isinstance(event, Event[model]) and isinstance(event.data, model)
    assert event.type == model.TYPE and event.time.tzinfo is not None


def test_example_details_arrive_typed():
    request = parse_event((EXAMPLES / "training.requested.json").read_bytes()).data
    assert request.version == "latest" and request.export_only is False and request.checkpoint_uri is None
    assert request.overrides.explicit() == {"epochs": 50, "batch_size": 64, "learning_rate": 0.0005}
    registered = parse_event((EXAMPLES / "model.registered.json").read_bytes()).data
    assert registered.onnx.bytes == 1843211 and registered.dataset.version == 1 and registered.promoted is True


def test_the_champion_examples_arrive_typed():
    promote = parse_event((EXAMPLES / "model.promote.json").read_bytes(), routing_key="model.promote").data
    assert (promote.model_name, promote.version) == ("heimdall-localization", 11) and promote.reason.startswith("roll")
    changed = parse_event((EXAMPLES / "model.champion-changed.json").read_bytes()).data
    assert (changed.version, changed.previous_version, changed.cause) == (11, 12, "ops")
    assert changed.trigger_id == "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d" and changed.job_id is None
    assert changed.onnx.bytes == 1843107 and changed.card_uri.endswith("/11/model.json")


def test_model_registered_example_validates_against_the_model_directly():
    ModelRegistered.model_validate(example("model.registered.json")["data"], strict=False)
    Event[ModelRegistered].model_validate_json((EXAMPLES / "model.registered.json").read_bytes())


# ---- forward compatibility -----------------------------------------------------------------


def test_unknown_fields_are_ignored_in_envelope_and_data():
    event = example("dataset.ready.json")
    event["traceparent"] = "00-abc-def-01"
    event["data"]["checksum"] = {"sha256": "…"}
    parsed = parse_event(body(event))
    assert parsed.data.sessions == 24 and "traceparent" not in parsed.model_dump()


def test_unknown_extra_metrics_are_kept_in_model_registered():
    event = example("model.registered.json")
    event["data"]["metrics"]["p50_error_km"] = 14.2
    assert parse_event(body(event)).data.metrics.model_extra == {"p50_error_km": 14.2}


# ---- refusals: each reason with a concrete bad body ----------------------------------------


def test_a_body_over_one_mebibyte_is_too_large_before_parsing():
    error = refusal(b"{" + b" " * c.MAX_BODY_BYTES)  # 1 MiB + 1, and not even JSON
    assert error.reason == "too-large" and not error.retryable


def test_a_body_of_exactly_one_mebibyte_is_parsed():
    raw = body(example("training.cancel.json"))
    parse_event(raw[:-1] + b" " * (c.MAX_BODY_BYTES - len(raw)) + raw[-1:])


@pytest.mark.parametrize("raw", [b'{"specversion": "1.0",', b"\xff\xfe", b""])
def test_malformed_json_is_refused(raw):
    assert refusal(raw).reason == "malformed-json"


def test_a_missing_envelope_attribute_is_named():
    event = example("dataset.ready.json")
    del event["id"]
    error = refusal(body(event))
    assert (error.reason, error.detail) == ("invalid-envelope", "id: Field required")


@pytest.mark.parametrize(
    ("field", "value"), [("time", "2026-11-28T10:00:00"), ("specversion", "0.3"), ("id", ""), ("id", 42)]
)
def test_a_bad_envelope_attribute_is_refused(field, value):
    event = example("dataset.ready.json")
    event[field] = value
    error = refusal(body(event))
    assert error.reason == "invalid-envelope" and error.detail.startswith(f"{field}:")


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b'{"specversion": "1.0"}'])
def test_a_body_without_an_object_and_a_type_is_an_invalid_envelope(raw):
    assert refusal(raw).reason == "invalid-envelope"


def test_a_wrong_type_for_version_is_invalid_data():
    event = example("dataset.ready.json")
    event["data"]["version"] = "7"  # strict: a string is not an integer, even one that looks like it
    error = refusal(body(event))
    assert error.reason == "invalid-data" and error.detail.startswith("data.version:")


@pytest.mark.parametrize("version", [0, "newest", 1.5, None])
def test_a_requested_version_is_an_integer_or_latest(version):
    error = refusal(requested(version=version))
    assert (error.reason, error.detail) == ("invalid-data", "data.version: Input should be an integer >= 1 or 'latest'")


@pytest.mark.parametrize("event_type", ["heimdall.dataset.deleted.v1", "heimdall.dataset.ready.v2", "dataset.ready"])
def test_an_unknown_type_or_type_version_is_refused(event_type):
    event = example("dataset.ready.json")
    event["type"] = event_type
    assert refusal(body(event)).reason == "unknown-type"


def test_a_misspelt_override_is_refused_naming_the_key():
    error = refusal(requested(overrides={"epoch": 5}))
    assert error.reason == "invalid-data" and error.detail.startswith("data.overrides.epoch:")


@pytest.mark.parametrize(
    ("override", "value"), [("validation_split", 0.5), ("learning_rate", 0), ("preset", "huge"), ("devices", 1)]
)
def test_an_override_out_of_range_is_refused(override, value):
    error = refusal(requested(overrides={override: value}))
    assert error.reason == "invalid-data" and error.detail.startswith(f"data.overrides.{override}:")


def test_export_only_without_checkpoint_uri_is_refused():
    error = refusal(requested(export_only=True))
    assert error.reason == "invalid-data" and "checkpoint_uri" in error.detail
    parse_event(requested(export_only=True, checkpoint_uri="s3://heimdall-models/ckpt/last.ckpt"))


@pytest.mark.parametrize(("cause", "missing"), [("gate", "job_id"), ("ops", "trigger_id")])
def test_a_champion_change_names_the_id_of_its_cause(cause, missing):
    event = example("model.champion-changed.json")
    event["data"] = {k: v for k, v in event["data"].items() if k not in ("job_id", "trigger_id")} | {"cause": cause}
    error = refusal(body(event))
    assert (error.reason, error.detail) == ("invalid-data", f"data: {missing} is required when cause is {cause}")


@pytest.mark.parametrize(("field", "value"), [("cause", "manual"), ("previous_version", 0), ("version", "11")])
def test_a_bad_champion_change_is_refused(field, value):
    event = example("model.champion-changed.json")
    event["data"][field] = value
    error = refusal(body(event))
    assert error.reason == "invalid-data" and error.detail.startswith(f"data.{field}:")


def test_a_promote_names_an_existing_version_number():
    event = example("model.promote.json")
    event["data"]["version"] = "latest"
    assert refusal(body(event)).detail.startswith("data.version:")


def test_a_missing_data_field_is_named():
    event = example("training.cancel.json")
    del event["data"]["job_id"]
    assert refusal(body(event)).detail == "data.job_id: Field required"


def test_an_event_on_another_routing_key_is_refused():
    error = refusal((EXAMPLES / "dataset.ready.json").read_bytes(), routing_key=c.TRAINING_REQUESTED)
    assert error.reason == "routing-key-mismatch"


# ---- building events to publish -------------------------------------------------------------


def published_samples():
    registered = ModelRegistered.model_validate(example("model.registered.json")["data"], strict=False)
    changed = ModelChampionChanged.model_validate(example("model.champion-changed.json")["data"], strict=False)
    gate = changed.model_copy(update={"cause": "gate", "job_id": "j1", "trigger_id": None, "previous_version": None})
    return [
        TrainingAccepted(job_id="j1", trigger_id="t1", dataset_id="nw-italy-mini", version=1, config_hash="ab12"),
        TrainingStarted(job_id="j1", attempt=1, mlflow_run_id=None),
        TrainingProgress(
            job_id="j1", epoch=3, max_epochs=50, eta_s=120.0,
            metrics={"train_loss": 1.5, "val_loss": None, "val_median_error_m": 15000.0},
        ),
        TrainingFailed(job_id="j1", stage="export", error_type="OnnxMismatch", message="…", retryable=False, attempt=2),
        registered,
        changed,
        ModelChampionChanged.model_validate(gate.model_dump()),
    ]


@pytest.mark.parametrize("data", published_samples(), ids=lambda d: type(d).__name__)
def test_make_event_round_trips_through_parse_event(data):
    event = make_event(data, subject="nw-italy-mini/v1")
    parsed = parse_event(event.to_bytes(), routing_key=data.ROUTING_KEY)
    assert parsed == event and type(parsed) is Event[type(data)]
    assert parsed.source == c.SOURCE_TRAINING and parsed.type == data.TYPE


def test_make_event_fills_a_fresh_id_and_the_current_utc_time():
    first, second = (make_event(TrainingCancel(job_id="j1", reason="r")) for _ in range(2))
    assert first.id != second.id
    assert abs(first.time - datetime.now(timezone.utc)) < timedelta(seconds=5)
    assert first.time.utcoffset() == timedelta(0)


def test_to_bytes_is_compact_utf8_json_without_a_null_subject():
    raw = make_event(TrainingCancel(job_id="j1", reason="données"), id="e1").to_bytes()
    assert b"\n" not in raw and b": " not in raw and "données".encode() in raw
    assert "subject" not in json.loads(raw)


def test_make_event_refuses_a_naive_time():
    with pytest.raises(ValidationError):
        make_event(TrainingCancel(job_id="j1", reason="r"), time=datetime(2026, 11, 28, 10))


def test_a_misspelt_field_in_our_own_published_event_fails():
    with pytest.raises(ValidationError, match="mlflow_run_id"):
        TrainingStarted(job_id="j1", attempt=1, mlflow_run="r1")


def test_model_uri_must_name_the_registered_version():
    data = example("model.registered.json")["data"] | {"model_version": 13}
    with pytest.raises(ValidationError, match="models:/heimdall-localization/13"):
        ModelRegistered.model_validate(data, strict=False)


def test_envelope_type_must_match_its_data():
    with pytest.raises(ValidationError, match="does not match"):
        Event[TrainingCancel](
            specversion="1.0", id="e1", source="s", type=c.DATASET_READY_TYPE,
            time=datetime.now(timezone.utc), data=TrainingCancel(job_id="j1", reason="r"),
        )


def test_overrides_explicit_returns_only_what_was_given():
    assert TrainingOverrides(epochs=3, seed=None).explicit() == {"epochs": 3}
    assert TrainingOverrides().explicit() == {}


# ---- constants, generated documents, dependencies ------------------------------------------


def test_every_event_has_its_type_and_routing_key():
    assert len(BY_TYPE) == 11 and c.EXCHANGE == "heimdall.events" and c.MAX_BODY_BYTES == 1_048_576
    for model in CONSUMED + PUBLISHED:
        assert model.TYPE == f"heimdall.{model.ROUTING_KEY}.v1"


def test_committed_schemas_and_asyncapi_are_not_stale():
    stale = schema.stale()
    assert not stale, f"stale: {[str(p) for p in stale]}; run `python -m messages.schema --write`"


def test_the_check_command_fails_when_a_model_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "SCHEMA_DIR", tmp_path)  # an empty folder: every schema is stale
    monkeypatch.setattr(schema, "ASYNCAPI_PATH", tmp_path / "asyncapi.json")
    (tmp_path / "heimdall.removed.v1.json").write_text("{}")
    assert schema.main(["--check"]) == 1
    assert tmp_path / "heimdall.removed.v1.json" in schema.stale()
    assert schema.main(["--write"]) == 0 and schema.stale() == []


def test_asyncapi_describes_all_eleven_events_self_contained():
    doc = json.loads(schema.ASYNCAPI_PATH.read_text())
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["version"] == messages.__version__
    addresses = {ch["address"] for ch in doc["channels"].values()}
    assert addresses == {m.ROUTING_KEY for m in CONSUMED + PUBLISHED}
    actions = {name: op["action"] for name, op in doc["operations"].items()}
    assert actions == {f"receive{m.__name__}": "receive" for m in CONSUMED} | {
        f"send{m.__name__}": "send" for m in PUBLISHED
    }
    exchange = doc["channels"]["datasetReady"]["bindings"]["amqp"]["exchange"]
    assert exchange == {"name": "heimdall.events", "type": "topic", "durable": True, "autoDelete": False, "vhost": "/"}
    for ref in _refs(doc):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]  # a KeyError here is a dangling reference


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from [value] if key == "$ref" else _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_package_version_matches_its_pyproject():
    project = tomllib.loads((ROOT / "messages" / "pyproject.toml").read_text())["project"]
    assert project["version"] == messages.__version__ and project["dependencies"] == ["pydantic==2.14.4"]


def test_messages_imports_only_pydantic_and_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import messages, messages.schema; "
        "print(messages.__file__); print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    location, modules = out.splitlines()
    assert location == str(ROOT / "messages" / "__init__.py")
    stdlib = set(sys.stdlib_module_names)
    third_party = {m for m in modules.split() if m not in stdlib and not m.startswith("_sysconfigdata")}
    assert not third_party & {"service", "training", "foundation", "cli", "torch", "aio_pika", "aiormq", "mlflow", "boto3", "numpy", "faststream"}
    allowed = {"messages", "pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection"}
    assert third_party <= allowed, f"messages must depend on pydantic only, not {sorted(third_party - allowed)}"
