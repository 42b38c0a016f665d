"""The one settings object, built once at start-up from `HEIMDALL_*` environment variables.

Nested sections use a double underscore: `HEIMDALL_S3__ENDPOINT_URL`. A variable with the
prefix that names no field is refused at start-up, so a misspelt setting never goes unnoticed.
Secrets are `SecretStr`: they never appear in logs or reprs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, SerializationInfo, field_serializer, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from foundation.logs import register_secrets
from foundation.train_config import TrainConfig
from foundation.object_store import S3Credentials

ENV_PREFIX = "HEIMDALL_"
SETTINGS_ENV = ENV_PREFIX + "SETTINGS_JSON"  # the whole settings model, serialised: how a training child gets them


def reveal_for_child(value: SecretStr | None, info: SerializationInfo) -> str | None:
    """Secrets stay masked in every dump but the one `Settings.serialised` makes for the child."""
    if value is None:
        return None
    return value.get_secret_value() if (info.context or {}).get("reveal_secrets") else str(value)


def url_credentials(url: str) -> list[str]:
    """The user-info of a URL (`user:password`) and its password alone; none when it has none."""
    authority = url.partition("://")[2].partition("/")[0]
    if "@" not in authority:
        return []
    userinfo = authority.rpartition("@")[0]
    return [userinfo, userinfo.partition(":")[2]]


class S3Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None  # None: AWS itself; http://127.0.0.1:8333 for SeaweedFS/MinIO
    access_key_id: SecretStr | None = None  # None: boto3's own chain (AWS_ACCESS_KEY_ID, ...)
    secret_access_key: SecretStr | None = None
    region: str = "us-east-1"

    _reveal = field_serializer("access_key_id", "secret_access_key")(reveal_for_child)

    def credentials(self) -> S3Credentials:
        return S3Credentials(
            endpoint_url=self.endpoint_url,
            access_key_id=self.access_key_id.get_secret_value() if self.access_key_id else None,
            secret_access_key=self.secret_access_key.get_secret_value() if self.secret_access_key else None,
            region=self.region,
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    # Everything the embedded mode keeps (cache, local object store, MLflow SQLite) lives here.
    state_dir: Path = Path(".heimdall")
    # Verified shards, addressed by SHA-256; defaults to <state_dir>/cache.
    cache_dir: Path | None = None
    # Where model.onnx and model.json are published; defaults to <state_dir>/store/models.
    models_uri: str | None = None
    # MLflow tracking + registry; defaults to SQLite in <state_dir> (no server needed).
    mlflow_tracking_uri: str | None = None
    # Artifact root for experiments this service creates when MLflow runs embedded (SQLite);
    # a tracking server decides its own (proxied) artifact root.
    mlflow_artifacts_uri: str | None = None
    model_name: str = "heimdall-localization"
    # Absolute shard URIs in a manifest must lie under the dataset's own root or one of these.
    allowed_dataset_locations: list[str] = []
    s3: S3Settings = S3Settings()

    # --- the event-driven service (`serve`) ---
    # RabbitMQ; the password lives in a SecretStr so the URL never reaches a log.
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    # Where every job's checkpoints are kept so that any replica can resume any job (s3://... in
    # production). None: only in this replica's <state_dir>/checkpoints.
    checkpoints_uri: str | None = None
    # Job store: SQLite in <state_dir> when embedded, PostgreSQL in production.
    job_store_url: str | None = None
    # Deadline of every job-store call (connecting, one statement, a lock wait): a database that
    # accepts connections and never answers makes the service unready instead of stalling it.
    job_store_timeout_s: float = Field(10.0, gt=0)
    # Training parameters for automatic (dataset.ready) jobs; ops overrides apply on top.
    default_training: dict[str, Any] = {}
    # Where datasets live (`<root>/<id>/v<k>/`), to resolve training.requested versions and "latest".
    dataset_root_uri: str | None = None
    # A dataset.json larger than this is refused: `serve` reads it in memory, several at once.
    max_manifest_bytes: int = Field(16 * 1024 * 1024, gt=0)
    # AMQP user ids whose training.requested / training.cancel are obeyed.
    ops_allowed_users: list[str] = []
    # Automatic retraining of one dataset: at most one job started per interval.
    min_retrain_interval_s: float = 0.0
    job_timeout_s: float = 6 * 3600.0
    max_attempts: int = 3  # tries of a job whose failures are retryable
    retry_backoff_s: float = 30.0  # first retry delay; doubles per attempt, with jitter
    lease_s: float = 30.0  # a claim not renewed this long is presumed dead (kill -9) and reclaimed
    progress_interval_s: float = 5.0  # at most one training.progress per job per interval
    # A running child that sends nothing (it sends a heartbeat every 5 s) for this long is stopped,
    # deadlocked or stuck in its imports: it is killed and the job retried. Keep it above a warm
    # spare's import time (10-20 s here): a job handed to a spare still importing waits for them.
    child_silence_s: float = Field(120.0, gt=5.0)
    shutdown_grace_s: float = 60.0  # SIGTERM: time the running job gets to checkpoint
    prefetch_count: int = 8
    # Keep one training child started ahead, with torch, Lightning and MLflow imported: a job starts
    # in it at once. Each job still runs in a fresh process of its own.
    warm_spare: bool = True
    # Retention: finished jobs, their events and checkpoints, and the event ids that de-duplicate
    # triggers are purged after this long. At least a day: far longer than any redelivery takes
    # (RabbitMQ's consumer_timeout is 30 min, and a message is redelivered at most 5 times).
    retention_s: float = Field(30 * 86400.0, ge=86400.0)
    cache_retention_s: float = Field(7 * 86400.0, gt=0)  # cached shards not read for this long
    purge_interval_s: float = Field(3600.0, gt=0)
    http_port: int = 8080  # /healthz, /readyz, /metrics; 0 disables
    replica_id: str | None = None  # defaults to <hostname>-<pid>

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        state = self.state_dir.expanduser().resolve()
        self.state_dir = state
        self.cache_dir = (self.cache_dir or state / "cache").expanduser().resolve()
        self.models_uri = self.models_uri or f"file://{state}/store/models"
        TrainConfig(**self.default_training)  # refuse a bad default at start-up, naming the field
        self.job_store_url = self.job_store_url or f"sqlite:///{state}/jobs.db"
        self.replica_id = self.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{state}/mlflow.db"
            self.mlflow_artifacts_uri = self.mlflow_artifacts_uri or f"file://{state}/mlartifacts"
        return self


    _reveal = field_serializer("amqp_url")(reveal_for_child)

    def secret_values(self) -> list[str]:
        """What must never be shown: keys, and the credentials inside the broker, MLflow and job-store URLs."""
        urls = [self.amqp_url.get_secret_value(), self.mlflow_tracking_uri or "", self.job_store_url or ""]
        keys = [s.get_secret_value() for s in (self.s3.access_key_id, self.s3.secret_access_key) if s]
        return keys + [credentials for url in urls for credentials in url_credentials(url)]

    def serialised(self) -> str:
        """Every setting as JSON, secrets included: for the child's environment (`SETTINGS_ENV`) only."""
        return self.model_dump_json(context={"reveal_secrets": True})

    def job_checkpoint_dir(self, job_id: str) -> Path:
        """Where a job's checkpoints live on this replica (last.ckpt, top-k, a downloaded given.ckpt)."""
        return self.state_dir / "checkpoints" / job_id

    @property
    def dataset_locations(self) -> list[str]:
        """Where datasets may be read from: the dataset root and the extra allowed locations."""
        return [self.dataset_root_uri, *self.allowed_dataset_locations] if self.dataset_root_uri \
            else list(self.allowed_dataset_locations)


def _refuse_unknown_env(environ: dict[str, str]) -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {SETTINGS_ENV}
    nested = {ENV_PREFIX + "S3__" + name.upper() for name in S3Settings.model_fields}
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known | nested)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known | nested))}")


def load_settings(**overrides) -> Settings:
    """Build the settings once; raises ValueError naming any unknown or invalid setting. A training
    child gets the service's own settings whole, in `SETTINGS_ENV`."""
    _refuse_unknown_env(dict(os.environ))
    if SETTINGS_ENV in os.environ:
        settings = Settings.model_validate_json(os.environ[SETTINGS_ENV]).model_copy(update=overrides)
    else:
        settings = Settings(**overrides)
    register_secrets(settings.secret_values())
    return settings
