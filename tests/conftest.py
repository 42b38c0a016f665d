"""Session fixtures start the real servers once; factory fixtures build what each test needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.servers import BUCKETS, Postgres, S3Server, mlflow_server, seaweedfs

EXAMPLE_DATASET = Path(__file__).resolve().parents[2] / "shared" / "contracts" / "examples" / "nw-italy-mini" / "v1"


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



@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory) -> Path:
    """A tiny dataset written by `heimdall-training synth` (once per test module), as a user makes one."""
    root = tmp_path_factory.mktemp("datasets")
    done = run_cli(["synth", "--out", str(root), "--sessions", "240", "--samples_per_capture", "256",
                    "--dataset_id", "cli-tiny", "--seed", "3"], root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"file://{root}/cli-tiny/v1"
    return root / "cli-tiny" / "v1"
