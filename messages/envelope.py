"""The CloudEvents 1.0 envelope around one event model, and the AMQP body it travels as.

`Event[D]` is the envelope around one data model `D` (`messages.payloads`, `messages.model_events`);
a handler takes `Event[DatasetReady]` (say) and never sees a dict. `parse_event` turns an AMQP body into the
typed envelope its `type` names; `make_event` builds one to publish. The envelope is strict,
like the payloads, and ignores unknown attributes.
"""

import json
import uuid
from datetime import datetime, timezone
from typing import Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from messages import constants as c
from messages.errors import InvalidMessage
from messages.catalogue import BY_TYPE
from messages.model_events import ModelChampionChanged, ModelPromote, ModelRegistered
from messages.payloads import (
    DatasetReady,
    EventData,
    NonEmpty,
    TrainingAccepted,
    TrainingCancel,
    TrainingCancelled,
    TrainingFailed,
    TrainingProgress,
    TrainingRequested,
    TrainingStarted,
)

DataT = TypeVar("DataT", bound=EventData)


class Event(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 envelope (structured JSON mode) whose `data` is one event model."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    specversion: Literal["1.0"]
    id: NonEmpty = Field(description="Unique per event; consumers de-duplicate by it.")
    source: NonEmpty
    type: str
    time: AwareDatetime = Field(description="RFC 3339, with a time zone.")
    subject: str | None = None
    datacontenttype: str = c.CONTENT_TYPE
    data: DataT

    @classmethod
    def model_parametrized_name(cls, params: tuple[type[Any], ...]) -> str:
        # Event[DatasetReady] is named "DatasetReadyEvent" in JSON Schemas and AsyncAPI.
        return f"{params[0].__name__}Event" if isinstance(params[0], type) else super().model_parametrized_name(params)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):  # noqa: ANN001, ANN206 (pydantic's hook)
        schema = super().__get_pydantic_json_schema__(core_schema, handler)
        (data_type,) = cls.__pydantic_generic_metadata__["args"] or (None,)
        if isinstance(data_type, type) and issubclass(data_type, EventData):
            handler.resolve_ref_schema(schema)["properties"]["type"]["const"] = data_type.TYPE
        return schema

    @model_validator(mode="after")
    def _type_names_data(self) -> "Event[DataT]":
        if isinstance(self.data, EventData) and self.type != self.data.TYPE:
            raise ValueError(f"type {self.type!r} does not match data {type(self.data).__name__} ({self.data.TYPE})")
        return self

    def to_bytes(self) -> bytes:
        """The AMQP body: compact UTF-8 JSON; an absent `subject` is left out, not sent as null."""
        return self.model_dump_json(exclude={"subject"} if self.subject is None else None).encode()


ConsumedEvent = Event[DatasetReady] | Event[TrainingRequested] | Event[TrainingCancel] | Event[ModelPromote]
PublishedEvent = (
    Event[TrainingAccepted] | Event[TrainingStarted] | Event[TrainingProgress]
    | Event[TrainingFailed] | Event[TrainingCancelled] | Event[ModelRegistered] | Event[ModelChampionChanged]
)
AnyEvent = ConsumedEvent | PublishedEvent


def make_event(
    data: DataT,
    *,
    subject: str | None = None,
    id: str | None = None,  # noqa: A002 (the CloudEvents attribute's own name)
    time: datetime | None = None,
    source: str = c.SOURCE_TRAINING,
) -> Event[DataT]:
    """Wrap `data` in a new envelope: a fresh uuid4 `id` and the current UTC `time` by default.

    Raises pydantic.ValidationError for an empty id or source, or a `time` without a time zone.
    """
    return Event[type(data)](
        specversion=c.SPECVERSION,
        id=id if id is not None else str(uuid.uuid4()),
        source=source,
        type=data.TYPE,
        time=time if time is not None else datetime.now(timezone.utc),
        subject=subject,
        data=data,
    )


def parse_event(body: bytes, *, routing_key: str | None = None) -> AnyEvent:
    """The typed envelope for the event `body` holds.

    With `routing_key`, the event's `type` must be one that travels under that key.
    Raises InvalidMessage, whose `reason` is, in the order checked: too-large, malformed-json,
    invalid-envelope (not an object, or no string `type`), unknown-type, routing-key-mismatch,
    then invalid-envelope or invalid-data for what pydantic refuses.
    """
    if len(body) > c.MAX_BODY_BYTES:
        raise InvalidMessage("too-large", f"body is {len(body)} bytes, over the {c.MAX_BODY_BYTES}-byte limit")
    try:
        raw = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise InvalidMessage("malformed-json", f"body is not UTF-8 JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidMessage("invalid-envelope", f"body is a JSON {type(raw).__name__}, not an object")
    event_type = raw.get("type")
    if not isinstance(event_type, str):
        raise InvalidMessage("invalid-envelope", "type: a string CloudEvents type is required")
    data_model = BY_TYPE.get(event_type)
    if data_model is None:
        raise InvalidMessage("unknown-type", f"type {event_type!r} is not one of {sorted(BY_TYPE)}")
    if routing_key is not None and routing_key != data_model.ROUTING_KEY:
        raise InvalidMessage(
            "routing-key-mismatch", f"type {event_type!r} travels under {data_model.ROUTING_KEY!r}, not {routing_key!r}"
        )
    try:
        return Event[data_model].model_validate_json(body)
    except ValidationError as exc:
        raise _refusal(exc) from exc


def _refusal(exc: ValidationError) -> InvalidMessage:
    """Envelope errors first; the detail names the first offending field by its dotted path."""
    errors = exc.errors(include_url=False, include_input=False)
    envelope = [e for e in errors if not e["loc"] or e["loc"][0] != "data"]
    first = (envelope or errors)[0]
    where = ".".join(str(part) for part in first["loc"]) or "event"
    return InvalidMessage("invalid-envelope" if envelope else "invalid-data", f"{where}: {first['msg']}")
