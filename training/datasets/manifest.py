"""`dataset.json` of `heimdall.dataset/1` as a pydantic model, plus the layout's fixed names.

Shared by the writer (`training.datasets.writer`) and the reader (`training.datasets.reader`),
so both sides agree on one definition of the contract. Unknown extra fields are ignored:
a newer writer may add some.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "heimdall.dataset/1"
MANIFEST_FILE = "dataset.json"
COLLECTION_FILE = "shard.sigmf-collection"
DATATYPE = "cf32_le"
DATASET_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SPLITS = ("train", "val", "test")


def meta_name(receiver_id: str) -> str:
    return f"rx-{receiver_id}.sigmf-meta"


def data_name(receiver_id: str) -> str:
    return f"rx-{receiver_id}.sigmf-data"


def version_key(dataset_id: str, version: int) -> str:
    """The version folder below a dataset root: `<dataset_id>/v<version>`."""
    return f"{dataset_id}/v{version}"


class Receiver(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    altitude_m: float = Field(ge=-500, le=9000)


class Shard(BaseModel):
    model_config = ConfigDict(extra="ignore")

    path: str = Field(min_length=1)  # relative to the version folder, or an absolute URI
    sessions: int = Field(ge=0)
    files: dict[str, str]  # file name -> SHA-256 hex


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    schema_: str = Field(alias="schema")
    dataset_id: str = Field(pattern=DATASET_ID_PATTERN)
    version: int = Field(ge=1)
    parent_version: int | None = None
    created_at: str
    center_frequency_hz: float = Field(gt=0)
    sample_rate_hz: float = Field(gt=0)
    samples_per_capture: int = Field(gt=0)
    receivers: list[Receiver] = Field(min_length=1)
    shards: list[Shard]
    sessions: int = Field(ge=0)
    labelled_sessions: int = Field(ge=0)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)
