"""Fixtures of the training tests that run jobs against the real servers (`s3_server` and
`mlflow_url`, started once per session in tests/conftest.py)."""

from __future__ import annotations

import uuid

import pytest

from foundation.settings import Settings


@pytest.fixture(scope="module")
def server_settings(s3_server, mlflow_url, tmp_path_factory) -> Settings:
    """A test module's jobs on the real S3 and `mlflow server`: a registered model of the module's
    own (a fresh name, so its first job meets no champion), published under s3://heimdall-models/models."""
    return Settings(state_dir=tmp_path_factory.mktemp("state"), models_uri="s3://heimdall-models/models",
                    mlflow_tracking_uri=mlflow_url, model_name=f"test-{uuid.uuid4().hex[:8]}",
                    s3=s3_server.settings())
