"""The `data` models of the events about the registered model's versions (`shared/contracts/events.md`):
a version registered, an operator's promote, and every move of the `champion` alias. Strict, and
ignoring unknown fields, like every payload (`messages.payloads`).
"""

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from messages import constants as c
from messages.payloads import DatasetId, EventData, NonEmpty, Version

ModelVersion = Annotated[int, Field(ge=1, description="A version of the registered model, as MLflow numbers it.")]


# ---- consumed by the training service ----------------------------------------------------


class ModelPromote(EventData):
    """An operator moves the `champion` alias to an existing version; to an older one, it is a rollback
    (obeyed only from an allow-listed AMQP user_id)."""

    TYPE: ClassVar[str] = c.MODEL_PROMOTE_TYPE
    ROUTING_KEY: ClassVar[str] = c.MODEL_PROMOTE

    model_name: NonEmpty
    version: ModelVersion
    reason: str


# ---- published by the training service ---------------------------------------------------


class OnnxArtifact(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    uri: NonEmpty
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=1)


class EvaluationMetrics(BaseModel):
    """Test-split metrics; further numeric metrics may be added."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")
    __pydantic_extra__: dict[str, float]

    median_error_m: float = Field(ge=0)
    p90_error_m: float = Field(ge=0)
    coverage_1sigma: float = Field(ge=0, le=1)
    coverage_2sigma: float = Field(ge=0, le=1)


class DatasetRef(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    id: DatasetId
    version: Version
    uri: NonEmpty


class ModelRegistered(EventData):
    """A model version is registered; model.onnx and model.json are readable at the URIs named."""

    TYPE: ClassVar[str] = c.MODEL_REGISTERED_TYPE
    ROUTING_KEY: ClassVar[str] = c.MODEL_REGISTERED

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


def _one_of_its_cause(field: str, cause: str) -> dict[str, Any]:
    return {"if": {"properties": {"cause": {"const": cause}}, "required": ["cause"]},
            "then": {"properties": {field: {"type": "string"}}, "required": [field]}}


class ModelChampionChanged(EventData):
    """The `champion` alias moved, by a job's champion gate or by ops; serve the version the latest one names."""

    # The schema states which id each cause names too, so that non-Python consumers can check it.
    model_config = ConfigDict(json_schema_extra={"allOf": [_one_of_its_cause("job_id", "gate"),
                                                           _one_of_its_cause("trigger_id", "ops")]})
    TYPE: ClassVar[str] = c.MODEL_CHAMPION_CHANGED_TYPE
    ROUTING_KEY: ClassVar[str] = c.MODEL_CHAMPION_CHANGED
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
