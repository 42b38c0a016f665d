"""Session fixtures start the real servers once; factory fixtures build what each test needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.servers import Postgres, S3Server, mlflow_server, seaweedfs

EXAMPLE_DATASET = Path(__file__).resolve().parents[2] / "shared" / "contracts" / "examples" / "nw-italy-mini" / "v1"
BUCKETS = ["mlflow", "heimdall-datasets", "heimdall-models"]


@pytest.fixture(scope="session")
def example_dataset() -> Path:
    if not (EXAMPLE_DATASET / "dataset.json").is_file():
        pytest.fail(f"the contract's example dataset is missing at {EXAMPLE_DATASET}")
    return EXAMPLE_DATASET


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs"), BUCKETS) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory, s3_server) -> str:
    with mlflow_server(tmp_path_factory.mktemp("mlflow"), s3_server, "s3://mlflow/artifacts") as url:
        yield url


@pytest.fixture
def clean_env(monkeypatch):
    """No HEIMDALL_* variable from the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("HEIMDALL_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture(scope="session")
def postgres():
    """Throwaway databases on the local PostgreSQL (deploy/services.sh starts it); dropped at the end."""
    server = Postgres()
    yield server
    server.close()


@pytest.fixture(scope="session")
def datasets(s3_server) -> dict[str, str]:
    """Small synthetic datasets under DATASETS_ROOT, written once per session (versions are immutable)."""
    from training.datasets.synth import SynthConfig, synthesize_dataset
    from foundation.object_store import S3Credentials
    from tests.e2e.test_service import DATASETS_ROOT

    credentials = S3Credentials(endpoint_url=s3_server.endpoint_url, access_key_id=s3_server.access_key_id,
                                secret_access_key=s3_server.secret_access_key)
    uris = {}
    for i, name in enumerate(["svc-main", "svc-dup", "svc-cancel", "svc-kill", "svc-r1", "svc-r2", "svc-r3"]):
        cfg = SynthConfig(sessions=240, seed=100 + i, samples_per_capture=256, shard_size=128, dataset_id=name)
        uris[name] = synthesize_dataset(cfg, DATASETS_ROOT, credentials=credentials)
    return uris
