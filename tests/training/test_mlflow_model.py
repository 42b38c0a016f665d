"""A registered version is a complete MLflow model, against the real `mlflow server` and S3: the job
registers a model trained on the neighbours' example dataset; MLflow's own loaders and server then
take it as it is, and the version says what it was trained on, how good it is and why it is (not)
champion."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from foundation.child_protocol import JobSpec
from foundation.logs import format_km
from foundation.object_store import open_store
from foundation.settings import Settings
from foundation.train_config import TrainConfig
from tests.support.servers import free_port, running, wait_until
from training.pipeline import open_dataset, run_job

TINY = TrainConfig(preset="tiny", epochs=2, batch_size=8, min_labelled_sessions=10)
CONTRACT_INPUTS = [("iq", (-1, -1, 256, 2)), ("rx_position", (-1, -1, 3)), ("rx_online", (-1, -1))]
CONTRACT_OUTPUTS = [("position", (-1, 2)), ("covariance", (-1, 2, 2))]


@pytest.fixture(scope="module")
def registered(server_settings, example_dataset) -> dict:
    """The first job for this model name: no champion yet, so it is promoted."""
    return run_job(server_settings, JobSpec(data_uri=str(example_dataset), config=TINY))


@pytest.fixture(scope="module")
def example_inputs(server_settings, example_dataset) -> dict[str, np.ndarray]:
    """Every session of the example dataset, as the contract's inputs."""
    data = open_dataset(server_settings, TINY, str(example_dataset))
    iq, online, rx = data.model_inputs(np.arange(len(data)))
    return {"iq": iq, "rx_position": rx, "rx_online": online}


def onnx_runtime(settings: Settings, registered: dict, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The published model.onnx (as the inference service reads it) run by ONNX Runtime."""
    store = open_store(settings.models_uri, settings.s3.credentials())
    onnx_bytes = store.read_bytes(f"{settings.model_name}/{registered['model']['model_version']}/model.onnx")
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return dict(zip(("position", "covariance"), session.run(None, inputs)))


def test_the_champion_loads_as_a_pyfunc_model_that_predicts_what_onnx_runtime_does(
        server_settings, registered, example_inputs, monkeypatch):
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_settings.mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{server_settings.model_name}@champion")
    signature = model.metadata.signature
    assert [(t.name, t.shape) for t in signature.inputs.inputs] == CONTRACT_INPUTS
    assert [(t.name, t.shape) for t in signature.outputs.inputs] == CONTRACT_OUTPUTS
    assert {t.type for t in [*signature.inputs.inputs, *signature.outputs.inputs]} == {np.dtype("float32")}
    predicted = model.predict(example_inputs)
    expected = onnx_runtime(server_settings, registered, example_inputs)
    assert len(example_inputs["iq"]) == 24 and predicted.keys() == expected.keys()
    for name, values in expected.items():
        np.testing.assert_array_equal(predicted[name], values, err_msg=name)


def test_the_champion_is_served_by_mlflow_models_serve(server_settings, registered, example_inputs, tmp_path):
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    env = {"MLFLOW_TRACKING_URI": server_settings.mlflow_tracking_uri,
           "PATH": f"{mlflow.parent}{os.pathsep}{os.environ['PATH']}"}  # its uvicorn is the environment's own
    invocations = f"http://127.0.0.1:{port}/invocations"
    first = {name: values[:3] for name, values in example_inputs.items()}
    body = json.dumps({"inputs": {name: values.tolist() for name, values in first.items()}}).encode()
    with running([str(mlflow), "models", "serve", "-m", f"models:/{server_settings.model_name}@champion",
                  "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env, tmp_path / "serve.log") as proc:
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).status == 200,
                   "mlflow models serve", 120, proc, tmp_path / "serve.log")
        request = urllib.request.Request(invocations, data=body, headers={"Content-Type": "application/json"})
        predictions = json.loads(urllib.request.urlopen(request, timeout=30).read())["predictions"]
    for name, values in onnx_runtime(server_settings, registered, first).items():
        np.testing.assert_array_equal(np.asarray(predictions[name], dtype=np.float32), values, err_msg=name)


def test_the_version_holds_the_mlflow_model_the_card_and_the_plots(server_settings, registered, tmp_path):
    import mlflow.artifacts

    version = registered["model"]["model_version"]
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{server_settings.model_name}/{version}", dst_path=str(tmp_path),
        tracking_uri=server_settings.mlflow_tracking_uri))
    files = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    assert {"MLmodel", "model.onnx", "model.json", "input_example.json", "serving_input_example.json",
            "requirements.txt", "plots/test_results.png"} <= files
    assert hashlib.sha256((local / "model.onnx").read_bytes()).hexdigest() == registered["model"]["onnx"]["sha256"]
    store = open_store(server_settings.models_uri, server_settings.s3.credentials())
    card = json.loads((local / "model.json").read_text())
    assert card == json.loads(store.read_bytes(f"{server_settings.model_name}/{version}/model.json"))
    assert card["model_version"] == version and card["schema"] == "heimdall.model/1"
    example = json.loads((local / "input_example.json").read_text())
    assert np.asarray(example["iq"]).shape[1:] == (7, 256, 2)


def test_the_version_says_what_it_was_trained_on_how_good_it_is_and_why_it_is_champion(server_settings, registered):
    from mlflow import MlflowClient

    client = MlflowClient(server_settings.mlflow_tracking_uri)
    version = client.get_model_version(server_settings.model_name, str(registered["model"]["model_version"]))
    trained_on, figures = version.description.split("\n")
    sessions = registered["sessions"]
    assert trained_on == (f"Trained on nw-italy-mini v1 ({sessions['train']} train, {sessions['val']} val, "
                          f"{sessions['test']} test sessions).")
    metrics, baselines = registered["metrics"], registered["baselines"]
    assert figures.startswith(f"Test median {format_km(metrics['median_error_m'])} "
                              f"(p90 {format_km(metrics['p90_error_m'])}); baselines' medians: ")
    assert baselines and all(f"{name} {format_km(b['median_error_m'])}" in figures for name, b in baselines.items())
    assert figures.endswith("Champion gate: promoted, no champion yet.")
    tags = version.tags
    assert tags["trained_on"] == "nw-italy-mini v1" and tags["registration"] == "complete"
    assert float(tags["test_median_error_m"]) == pytest.approx(metrics["median_error_m"], abs=0.05)
    assert all(float(tags[f"baseline_{name}_median_error_m"]) == pytest.approx(b["median_error_m"], abs=0.05)
               for name, b in baselines.items())
    found = client.search_model_versions(f"name='{server_settings.model_name}' and tags.gate_promoted='true' "
                                         f"and tags.trained_on='nw-italy-mini v1'")
    assert [v.version for v in found] == [version.version]


def test_a_later_version_gives_its_comparison_with_the_champion_as_the_reason(
        server_settings, registered, example_dataset):
    from mlflow import MlflowClient

    best = Path(registered["training"]["best_checkpoint"])
    again = run_job(server_settings,
                    JobSpec(data_uri=str(example_dataset), config=TINY, export_only=True, checkpoint=best))
    version = MlflowClient(server_settings.mlflow_tracking_uri).get_model_version(
        server_settings.model_name, str(again["model"]["model_version"]))
    median, champion = format_km(again["metrics"]["median_error_m"]), registered["model"]["model_version"]
    assert f"Champion gate: promoted, no worse: median {median}, " in version.description
    assert version.description.endswith("on the same sessions.") and \
        f"against champion version {champion}'s median {median}, p90 " in version.description
    assert version.tags["gate_champion_version"] == str(champion) and version.tags["gate_promoted"] == "true"
