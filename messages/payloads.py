"""The `data` models of the contract's job events (`shared/contracts/events.md`), and what every
payload shares; the events about model versions are in `messages.model_events`.

Every model is strict: JSON `"7"` is not an integer and `1` is not a string, because a producer
that sends the wrong type has a bug we want to see, not paper over. Unknown fields are ignored
(the contract's forward-compatibility rule), except in `TrainingOverrides`. The envelope that
carries them is `messages.envelope`.
"""

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from messages import constants as c

DatasetId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="Dataset id, as in dataset.md.")]
Version = Annotated[int, Field(ge=1, description="Dataset version number.")]
NonEmpty = Annotated[str, Field(min_length=1)]
Attempt = Annotated[int, Field(ge=1, description="1 for the first try of a job, then 2, 3, …")]


def _one_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # A union reports one error per member, each under a tag such as "constrained-int";
    # one plain sentence at the field's own location is what a dead-letter reader needs.
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError("version_or_latest", "Input should be an integer >= 1 or 'latest'") from None


VersionOrLatest = Annotated[
    Annotated[int, Field(ge=1)] | Literal["latest"],
    WrapValidator(_one_error),
    Field(description='A dataset version number, or "latest" for the newest complete one.'),
]


class ContractModel(BaseModel):
    """What every model of the contract is unless it says otherwise: strict, frozen, and ignoring
    unknown fields (see above)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


def required_when(field: str, condition: str, value: Any) -> dict[str, Any]:
    """The JSON Schema of a rule a model validator enforces: `field` (a string) is required when
    `condition` is `value`. Stated in the schema too, so that non-Python producers can check it."""
    return {"if": {"properties": {condition: {"const": value}}, "required": [condition]},
            "then": {"properties": {field: {"type": "string"}}, "required": [field]}}


class EventData(ContractModel):
    """What every `data` model shares: the CloudEvents `type` and AMQP routing key it travels under,
    given on its class line, `class DatasetReady(EventData, routing_key=…, event_type=…)`, so that
    the fields below it are the data alone and no event can be declared without both."""

    TYPE: ClassVar[str]
    ROUTING_KEY: ClassVar[str]

    def __init_subclass__(cls, *, routing_key: str, event_type: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.ROUTING_KEY, cls.TYPE = routing_key, event_type


# ---- consumed by the training service ----------------------------------------------------


class DatasetReady(EventData, routing_key=c.DATASET_READY, event_type=c.DATASET_READY_TYPE):
    """Acquisition finished writing a dataset version; it is complete and readable at `uri`."""

    dataset_id: DatasetId
    version: Version
    uri: NonEmpty = Field(description="The version folder, ending in /v<version>/ (dataset.md).")
    sessions: int = Field(ge=0)
    labelled_sessions: int = Field(ge=0)


class TrainingOverrides(ContractModel):
    """Training parameters that replace the configured defaults for one request."""

    # extra="forbid": a misspelt parameter ("epoch": 50) must be refused, not silently ignored,
    # or the job would train with the default and the operator would believe otherwise.
    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0)
    weight_decay: float | None = Field(default=None, ge=0)
    validation_split: float | None = Field(default=None, gt=0, lt=0.5)
    test_split: float | None = Field(default=None, gt=0, lt=0.5)
    preset: Literal["tiny", "small", "large", "radio-map", "radio-map-learned"] | None = None
    beta: float | None = Field(default=None, ge=0, le=1)
    patience: int | None = Field(default=None, ge=1)
    seed: int | None = None
    num_workers: int | None = Field(default=None, ge=0)
    accelerator: str | None = None
    devices: str | None = None

    def explicit(self) -> dict[str, Any]:
        """Only the parameters the request gave (null counts as not given), to merge over defaults."""
        return self.model_dump(exclude_unset=True, exclude_none=True)


class TrainingRequested(EventData, routing_key=c.TRAINING_REQUESTED, event_type=c.TRAINING_REQUESTED_TYPE):
    """An operator asks for a training run (obeyed only from an allow-listed AMQP user_id)."""

    model_config = ConfigDict(json_schema_extra=required_when("checkpoint_uri", "export_only", True))

    dataset_id: DatasetId
    version: VersionOrLatest
    overrides: TrainingOverrides = Field(default_factory=TrainingOverrides)
    export_only: bool = Field(default=False, description="Skip training: evaluate, export and register checkpoint_uri.")
    checkpoint_uri: NonEmpty | None = Field(default=None, description="Required when export_only is true.")
    resume_job_id: NonEmpty | None = Field(default=None, description="Resume this job's last checkpoint.")
    reason: str

    @model_validator(mode="after")
    def _export_needs_checkpoint(self) -> "TrainingRequested":
        if self.export_only and self.checkpoint_uri is None:
            raise PydanticCustomError("checkpoint_required", "checkpoint_uri is required when export_only is true")
        return self


class TrainingCancel(EventData, routing_key=c.TRAINING_CANCEL, event_type=c.TRAINING_CANCEL_TYPE):
    """An operator asks to cancel a job (obeyed only from an allow-listed AMQP user_id)."""

    job_id: NonEmpty
    reason: str


# ---- published by the training service ---------------------------------------------------
# No published field has a default, so a misspelt keyword in our own code fails as "missing"
# instead of being dropped; unknown fields are still ignored on input so that a consumer with an
# older copy of this package can read what a newer service publishes.


class TrainingAccepted(EventData, routing_key=c.TRAINING_ACCEPTED, event_type=c.TRAINING_ACCEPTED_TYPE):
    """A trigger became a job; `version` is resolved ("latest" never appears here)."""

    job_id: NonEmpty
    trigger_id: NonEmpty = Field(description="The `id` of the event that caused this job.")
    dataset_id: DatasetId
    version: Version
    config_hash: NonEmpty = Field(description="Hash of the resolved training configuration.")


class TrainingStarted(EventData, routing_key=c.TRAINING_STARTED, event_type=c.TRAINING_STARTED_TYPE):
    """An attempt of a job started training."""

    job_id: NonEmpty
    attempt: Attempt
    mlflow_run_id: str | None


class ProgressMetrics(ContractModel):
    train_loss: float | None
    val_loss: float | None
    val_median_error_m: float | None


class TrainingProgress(EventData, routing_key=c.TRAINING_PROGRESS, event_type=c.TRAINING_PROGRESS_TYPE):
    """Progress after an epoch; at most one every few seconds."""

    job_id: NonEmpty
    epoch: int = Field(ge=0)
    max_epochs: int = Field(ge=1)
    metrics: ProgressMetrics
    eta_s: float | None = Field(ge=0, description="Estimated seconds to the end of training.")


class TrainingFailed(EventData, routing_key=c.TRAINING_FAILED, event_type=c.TRAINING_FAILED_TYPE):
    """An attempt failed; with retryable=false the job is over."""

    job_id: NonEmpty
    stage: Literal["data", "train", "export", "register"]
    error_type: NonEmpty
    message: str
    retryable: bool
    attempt: Attempt


class TrainingCancelled(EventData, routing_key=c.TRAINING_CANCELLED, event_type=c.TRAINING_CANCELLED_TYPE):
    """A job ended because it was cancelled."""

    job_id: NonEmpty
    reason: str
