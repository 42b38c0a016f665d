"""The `data` models of the events about the registered model's versions (`shared/contracts/events.md`):
a version registered, an operator's promote, and every move of the `champion` alias. Strict, and
ignoring unknown fields, like every model of the contract (`messages.payloads.ContractModel`).
"""

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from messages import constants as c
from messages.payloads import ContractModel, DatasetId, EventData, NonEmpty, Version, required_when

ModelVersion = Annotated[int, Field(ge=1, description="A version of the registered model, as MLflow numbers it.")]


# ---- consumed by the training service ----------------------------------------------------


class ModelPromote(EventData, routing_key=c.MODEL_PROMOTE, event_type=c.MODEL_PROMOTE_TYPE):
    """An operator moves the `champion` alias to an existing version; to an older one, it is a rollback
    (obeyed only from an allow-listed AMQP user_id)."""

    model_name: NonEmpty
    version: ModelVersion
    reason: str


# ---- published by the training service ---------------------------------------------------


class OnnxArtifact(ContractModel):
    uri: NonEmpty
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=1)


class EvaluationMetrics(ContractModel):
    """Test-split metrics; further numeric metrics may be added."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float]

    median_error_m: float = Field(ge=0)
    p90_error_m: float = Field(ge=0)
    coverage_1sigma: float = Field(ge=0, le=1)
    coverage_2sigma: float = Field(ge=0, le=1)


class DatasetRef(ContractModel):
    id: DatasetId
    version: Version
    uri: NonEmpty


class ModelRegistered(EventData, routing_key=c.MODEL_REGISTERED, event_type=c.MODEL_REGISTERED_TYPE):
    """A model version is registered; model.onnx and model.json are readable at the URIs named."""

    job_id: NonEmpty
    model_name: NonEmpty
    model_version: int = Field(ge=1)
    aliases: list[str]
    promoted: bool
    model_uri: str = Field(pattern=r"^models:/[^/]+/[0-9]+$", description="models:/<name>/<version>")
    onnx: OnnxArtifact
    card_uri: NonEmpty
    metrics: EvaluationMetrics
    dataset: DatasetRef
    mlflow_run_id: NonEmpty

    @model_validator(mode="after")
    def _uri_names_this_version(self) -> "ModelRegistered":
        expected = f"models:/{self.model_name}/{self.model_version}"
        if self.model_uri != expected:
            raise PydanticCustomError("model_uri_mismatch", "model_uri must be {expected}", {"expected": expected})
        return self


class ModelChampionChanged(EventData, routing_key=c.MODEL_CHAMPION_CHANGED, event_type=c.MODEL_CHAMPION_CHANGED_TYPE):
    """The `champion` alias moved, by a job's champion gate or by ops; serve the version the latest one names."""

    model_config = ConfigDict(json_schema_extra={"allOf": [required_when("job_id", "cause", "gate"),
                                                           required_when("trigger_id", "cause", "ops")]})
    CAUSE_IDS: ClassVar[dict[str, str]] = {"gate": "job_id", "ops": "trigger_id"}

    model_name: NonEmpty
    version: ModelVersion = Field(description="The champion now.")
    previous_version: ModelVersion | None = Field(description="The champion before; null when there was none.")
    onnx: OnnxArtifact
    card_uri: NonEmpty
    cause: Literal["gate", "ops"] = Field(
        description="gate: a job's champion gate promoted it (job_id); ops: a model.promote (trigger_id).")
    # Each cause names one of the two, so the other may be absent: these two alone have defaults.
    job_id: NonEmpty | None = Field(default=None, description="The job whose gate promoted it (cause gate).")
    trigger_id: NonEmpty | None = Field(default=None, description="The `id` of the model.promote (cause ops).")
    reason: str

    @model_validator(mode="after")
    def _cause_names_its_id(self) -> "ModelChampionChanged":
        field = self.CAUSE_IDS[self.cause]
        if getattr(self, field) is None:
            raise PydanticCustomError("cause_id_required", "{field} is required when cause is {cause}",
                                      {"field": field, "cause": self.cause})
        return self
