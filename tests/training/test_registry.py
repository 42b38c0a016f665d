"""The registry's fences, against the real `mlflow server` and S3: one key, one version, and a
champion gate that fails closed."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from foundation.errors import RegistryError
from foundation.object_store import open_store
from training.registry import ModelRegistry
from tests.support.cli import CLI, TINY_FLAGS
from tests.support.servers import free_port


def test_two_children_racing_on_one_key_register_one_version(synth_dataset, tmp_path, s3_server, mlflow_url):
    """Two `train` processes for the same dataset and configuration, started together (what two
    replicas holding one job would do): exactly one model version carries the key."""
    model_name = f"race-{uuid.uuid4().hex[:6]}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    env = {**clean, "HEIMDALL_MLFLOW_TRACKING_URI": mlflow_url, "HEIMDALL_MODEL_NAME": model_name,
           "HEIMDALL_MODELS_URI": f"s3://heimdall-models/{model_name}",
           "HEIMDALL_S3__ENDPOINT_URL": s3_server.endpoint_url, "HEIMDALL_S3__ACCESS_KEY_ID": s3_server.access_key_id,
           "HEIMDALL_S3__SECRET_ACCESS_KEY": s3_server.secret_access_key}
    racers = [subprocess.Popen([*CLI, "train", "--data_dir", str(synth_dataset), *TINY_FLAGS, "--json"],
                               env={**env, "HEIMDALL_STATE_DIR": str(tmp_path / f"state-{i}")},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [racer.communicate(timeout=600) for racer in racers]
    results = [json.loads(out) for (out, _), racer in zip(outputs, racers) if racer.returncode == 0]
    failures = [json.loads(line) for (_, err), racer in zip(outputs, racers) if racer.returncode != 0
                for line in err.splitlines() if line.startswith("{") and '"failed"' in line]
    assert results, [err[-2000:] for _, err in outputs]
    assert all(f["retryable"] and f["stage"] == "register" for f in failures)  # a loser retries, then finds it
    from mlflow import MlflowClient

    versions = MlflowClient(mlflow_url).search_model_versions(f"name='{model_name}'")
    assert len(versions) == 1
    assert {r["model"]["model_version"] for r in results} == {int(versions[0].version)}


def test_an_unreachable_registry_is_a_retryable_failure_never_a_promotion(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    registry = ModelRegistry(f"http://127.0.0.1:{free_port()}", "gate", open_store(str(tmp_path / "models")))
    with pytest.raises(RegistryError) as raised:
        registry.champion_onnx(tmp_path)
    assert raised.value.retryable and raised.value.stage == "register"


def test_no_champion_yet_is_not_an_error(tmp_path, mlflow_url):
    registry = ModelRegistry(mlflow_url, f"gate-{uuid.uuid4().hex[:6]}", open_store(str(tmp_path / "models")))
    registry.ensure_registered_model()
    assert registry.champion_onnx(tmp_path) is None

