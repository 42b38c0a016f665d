"""JSON Schemas and the AsyncAPI document, generated from the models so that the docs cannot drift.

    python -m messages.schema --write   # regenerate messages/schemas/*.json and messages/asyncapi.json
    python -m messages.schema --check   # exit 1, naming each stale file, when they differ from the models
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

import messages
from messages import constants as c
from messages.envelope import Event
from messages.catalogue import CONSUMED, PUBLISHED
from messages.payloads import EventData

HERE = Path(__file__).resolve().parent
SCHEMA_DIR = HERE / "schemas"
ASYNCAPI_PATH = HERE / "asyncapi.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
AMQP_BINDING_VERSION = "0.3.0"


def envelope_schema(data_model: type[EventData]) -> dict[str, Any]:
    """The standalone JSON Schema of one event's envelope; nested models under its own `$defs`."""
    return {"$schema": JSON_SCHEMA_DIALECT, **Event[data_model].model_json_schema()}


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the service: one channel per routing key on the exchange."""
    models = CONSUMED + PUBLISHED
    # One schema pass over all envelopes, so shared nested models appear once under components.
    refs, top = models_json_schema(
        [(Event[m], "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    # pydantic names a generic's definition "Event_DatasetReady_"; use the class name instead.
    renames = {refs[(Event[m], "validation")]["$ref"]: f"#/components/schemas/{Event[m].__name__}" for m in models}
    schemas = {_last(renames.get(f"#/components/schemas/{k}", k)): v for k, v in sorted(top["$defs"].items())}
    schemas = dict(sorted(schemas.items()))
    operations = {f"receive{m.__name__}": _operation("receive", m) for m in CONSUMED}
    operations |= {f"send{m.__name__}": _operation("send", m) for m in PUBLISHED}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Heimdall training service",
            "version": messages.__version__,
            "description": (
                "Datasets in, registered ONNX localization models out. Every event is a CloudEvents 1.0 "
                f"envelope in structured JSON mode on the durable topic exchange `{c.EXCHANGE}`, routed by "
                "the event's short name. Delivery is at least once: consumers de-duplicate by `id`. "
                "`training.requested`, `training.cancel` and `model.promote` are obeyed only from an "
                "allow-listed AMQP `user_id`. Every move of the `champion` alias, by a job's champion gate or "
                "by ops, is followed by exactly one `model.champion-changed`, in the order of the moves."
            ),
        },
        "defaultContentType": c.CONTENT_TYPE,
        "channels": {_channel_id(m): _channel(m) for m in models},
        "operations": operations,
        "components": {
            "messages": {m.__name__: _message(m) for m in models},
            "schemas": _rewrite_refs(schemas, renames),
        },
    }


def _last(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _rewrite_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: renames.get(v, v) if k == "$ref" else _rewrite_refs(v, renames) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(v, renames) for v in node]
    return node


def _channel_id(model: type[EventData]) -> str:
    head, *rest = model.ROUTING_KEY.split(".")
    return head + "".join(word.capitalize() for word in rest)


def _channel(model: type[EventData]) -> dict[str, Any]:
    return {
        "address": model.ROUTING_KEY,
        "messages": {model.__name__: {"$ref": f"#/components/messages/{model.__name__}"}},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {
                    "name": c.EXCHANGE, "type": c.EXCHANGE_TYPE, "durable": True, "autoDelete": False, "vhost": "/",
                },
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    }


def _operation(action: str, model: type[EventData]) -> dict[str, Any]:
    channel = _channel_id(model)
    if action == "send":  # publisher confirms and `mandatory`, retried until confirmed
        binding = {"deliveryMode": c.DELIVERY_MODE_PERSISTENT, "mandatory": True, "timestamp": True}
    else:  # acknowledged after handling; refused bodies go to the queue's dead-letter exchange
        binding = {"ack": True}
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": (model.__doc__ or "").strip(),
        "messages": [{"$ref": f"#/channels/{channel}/messages/{model.__name__}"}],
        "bindings": {"amqp": {**binding, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _message(model: type[EventData]) -> dict[str, Any]:
    return {
        "name": model.TYPE,
        "title": model.__name__,
        "summary": (model.__doc__ or "").strip(),
        "contentType": c.CONTENT_TYPE,
        "payload": {"$ref": f"#/components/schemas/{Event[model].__name__}"},
        "bindings": {"amqp": {"messageType": model.TYPE, "bindingVersion": AMQP_BINDING_VERSION}},
        # AMQP basic properties the bindings have no field for; values are runtime expressions.
        "x-amqp-properties": {
            "delivery_mode": c.DELIVERY_MODE_PERSISTENT,
            "content_type": c.CONTENT_TYPE,
            "message_id": "$message.payload#/id",
            "type": "$message.payload#/type",
            "timestamp": "set by the publisher",
        },
    }


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def render() -> dict[Path, str]:
    """Every generated file, by path, with the exact text it should have on disk."""
    files = {SCHEMA_DIR / f"{m.TYPE}.json": _dump(envelope_schema(m)) for m in CONSUMED + PUBLISHED}
    files[ASYNCAPI_PATH] = _dump(asyncapi())
    return files


def stale() -> list[Path]:
    """Generated files that are missing or differ on disk, and schema files no model produces."""
    files = render()
    out_of_date = [p for p, text in files.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    leftovers = [p for p in sorted(SCHEMA_DIR.glob("*.json")) if p not in files]
    return out_of_date + leftovers


def write() -> list[Path]:
    """Write every generated file and delete schema files no model produces; returns what changed."""
    changed = stale()
    files = render()
    SCHEMA_DIR.mkdir(exist_ok=True)
    for path in changed:
        if path in files:
            path.write_text(files[path], encoding="utf-8")
        else:
            path.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m messages.schema", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the files")
    mode.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = parser.parse_args(argv)
    paths = write() if args.write else stale()
    for path in paths:
        print(f"{'written' if args.write else 'stale'}: {os.path.relpath(path)}")
    if args.check and paths:
        print("run `python -m messages.schema --write` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
