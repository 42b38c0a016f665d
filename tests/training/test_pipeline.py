"""The training job end to end, against a real S3 server (SeaweedFS) and a real `mlflow server`.

One tiny job trains on a synthetic dataset stored in S3; the tests then check every promise of
`model.md` on what it published, and register twice more to exercise the champion gate.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from foundation.child_protocol import JobSpec
from foundation.train_config import TrainConfig
from training.pipeline import open_dataset, run_job
from foundation.settings import Settings
from training.datasets.synth import SynthConfig, synthesize_dataset

TINY = TrainConfig(preset="tiny", epochs=4, batch_size=32, learning_rate=5e-3, patience=3)
CARD_FIELDS = {"schema", "model_name", "model_version", "created_at", "onnx", "signal", "receivers", "training",
               "metrics", "parity", "mlflow_run_id"}


@pytest.fixture(scope="module")
def s3_dataset_uri(server_settings) -> str:
    cfg = SynthConfig(sessions=300, seed=7, samples_per_capture=256, shard_size=128, dataset_id="tiny-s3")
    return synthesize_dataset(cfg, "s3://heimdall-datasets/synthetic", credentials=server_settings.s3.credentials())


@pytest.fixture(scope="module")
def first_job(server_settings, s3_dataset_uri, tmp_path_factory) -> dict:
    spec = JobSpec(data_uri=s3_dataset_uri, config=TINY, checkpoint_dir=tmp_path_factory.mktemp("ckpt"))
    return run_job(server_settings, spec)


def s3_read(settings: Settings, uri: str) -> bytes:
    from foundation.object_store import open_store

    root, _, key = uri.rpartition("/")
    return open_store(root, settings.s3.credentials()).read_bytes(key)


def test_published_onnx_matches_the_card_and_the_registry(server_settings, first_job):
    model = first_job["model"]
    onnx_bytes = s3_read(server_settings, model["onnx"]["uri"])
    card = json.loads(s3_read(server_settings, model["card_uri"]))
    assert model["onnx"]["uri"].startswith("s3://heimdall-models/models/")
    assert hashlib.sha256(onnx_bytes).hexdigest() == model["onnx"]["sha256"] == card["onnx"]["sha256"]
    assert len(onnx_bytes) == model["onnx"]["bytes"] == card["onnx"]["bytes"]
    assert CARD_FIELDS <= card.keys() and card["schema"] == "heimdall.model/1"
    assert card["model_version"] == model["model_version"] == 1
    assert card["metrics"]["median_error_m"] == pytest.approx(first_job["metrics"]["median_error_m"])
    assert card["parity"]["passed"] and card["parity"]["batch_sizes"] == [1, 16]
    assert card["training"]["config_hash"] == TINY.config_hash()
    split = card["training"]["split"]  # the default spatial split, sized from the seven receivers
    assert (split["method"], split["block_m"], split["buffer_m"]) == ("spatial blocks", 20_000.0, 5_000.0)
    assert card["signal"]["samples"] == 256 and card["signal"]["max_receivers"] == 7


def test_registry_version_has_aliases_and_the_same_files(server_settings, first_job, tmp_path):
    import mlflow.artifacts
    from mlflow import MlflowClient

    client = MlflowClient(server_settings.mlflow_tracking_uri)
    version = client.get_model_version_by_alias(server_settings.model_name, "champion")
    assert version.version == "1" and set(version.aliases) == {"candidate", "champion"}
    assert version.tags["config_hash"] == TINY.config_hash()
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{version.source}/model.onnx", dst_path=str(tmp_path),
                                                tracking_uri=server_settings.mlflow_tracking_uri)
    assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == first_job["model"]["onnx"]["sha256"]
    run = client.get_run(first_job["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert (run.data.params["split_method"], run.data.params["split_block_m"], run.data.params["split_buffer_m"]) \
        == ("spatial blocks", "20000", "5000")
    assert run.data.metrics["test_median_error_m"] == pytest.approx(first_job["metrics"]["median_error_m"])
    assert "baseline_weighted_centroid_median_error_m" in run.data.metrics
    assert {"val_loss", "train_loss", "val_median_error_m"} <= run.data.metrics.keys()
    assert "plots/test_results.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}


def test_onnx_runs_on_dataset_sessions_with_the_contract_inputs(server_settings, s3_dataset_uri, first_job):
    data = open_dataset(server_settings, TINY, s3_dataset_uri)
    session = ort.InferenceSession(s3_read(server_settings, first_job["model"]["onnx"]["uri"]),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["iq", "rx_position", "rx_online"]
    indices = data.indices("test")[:5]
    iq, online = data.read_many(indices)
    rx = np.repeat(data.rx_position[None], len(indices), axis=0)
    position, covariance = session.run(None, {"iq": iq, "rx_position": rx, "rx_online": online})
    assert position.shape == (5, 2) and covariance.shape == (5, 2, 2)
    error_km = np.median(np.hypot(*(position - data.emitter[indices, :2]).T)) * 111
    assert error_km < 150, "predictions are not even in the receivers' region"
    assert np.all(np.linalg.eigvalsh(covariance.astype(np.float64)) > 0)


def test_a_replayed_job_returns_the_registered_version_without_training(server_settings, s3_dataset_uri, first_job):
    replay = run_job(server_settings, JobSpec(data_uri=s3_dataset_uri, config=TINY))
    assert replay["already_registered_by"] == first_job["job_id"]
    assert replay["model"]["model_version"] == 1
    assert replay["model"]["onnx"] == first_job["model"]["onnx"]
    from mlflow import MlflowClient

    versions = MlflowClient(server_settings.mlflow_tracking_uri).search_model_versions(
        f"name='{server_settings.model_name}'")
    assert [v.version for v in versions] == ["1"]


def test_champion_moves_only_to_a_version_at_least_as_good(server_settings, s3_dataset_uri, first_job, tmp_path):
    from mlflow import MlflowClient

    from training.export import export_onnx
    from training.neural.model import LocalizationNet
    from foundation.object_store import open_store
    from training.registry import ModelRegistry

    # Registering the same checkpoint again: as good as the champion, so it is promoted.
    best = Path(first_job["training"]["best_checkpoint"])
    again = run_job(server_settings, JobSpec(data_uri=s3_dataset_uri, config=TINY, export_only=True, checkpoint=best))
    assert again["model"]["model_version"] == 2 and again["model"]["promoted"]
    # the gate scores both in ONNX Runtime on the same sessions: the same checkpoint, the same figures;
    # the job's metrics come from torch, equal to ONNX within float32 (0.08 m of 59 km seen)
    gate = again["model"]["gate"]
    assert again["model"]["champion_median_error_m"] == gate["candidate"]["median_error_m"]
    assert gate["candidate"]["median_error_m"] == pytest.approx(again["metrics"]["median_error_m"], rel=1e-6, abs=1.0)

    # An untrained network is far worse on the same sessions: it stays a candidate.
    data = open_dataset(server_settings, TINY, s3_dataset_uri)
    torch.manual_seed(0)
    untrained = LocalizationNet(samples=256, preset="tiny").eval()
    info = export_onnx(untrained, tmp_path / "model.onnx", samples=256)
    registry = ModelRegistry(server_settings.mlflow_tracking_uri, server_settings.model_name,
                             open_store(server_settings.models_uri, server_settings.s3.credentials()))
    worse = registry.publish(run_id=first_job["mlflow"]["run_id"], onnx_path=tmp_path / "model.onnx",
                             card={"onnx": info}, data=data, test_idx=data.indices("test"),
                             median_error_m=first_job["metrics"]["median_error_m"] * 3, parity_passed=True,
                             tags={"idempotency_key": f"untrained-{uuid.uuid4().hex[:8]}"})
    assert worse.model_version == 3 and not worse.promoted and worse.aliases == ["candidate"]
    client = MlflowClient(server_settings.mlflow_tracking_uri)
    assert client.get_model_version_by_alias(server_settings.model_name, "champion").version == "2"
    assert client.get_model_version_by_alias(server_settings.model_name, "candidate").version == "3"


def test_export_only_refuses_a_checkpoint_of_another_preset_before_any_run(server_settings, s3_dataset_uri,
                                                                           first_job):
    from mlflow import MlflowClient

    from foundation.errors import ConfigError

    client = MlflowClient(server_settings.mlflow_tracking_uri)
    runs = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    best = Path(first_job["training"]["best_checkpoint"])
    for config, named in ((TrainConfig(preset="radio-map"), "is not a radio map"),
                          (TINY.model_copy(update={"preset": "small"}), "holds a 'tiny' network")):
        with pytest.raises(ConfigError, match=named):
            run_job(server_settings, JobSpec(data_uri=s3_dataset_uri, config=config, export_only=True, checkpoint=best))
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == runs


class StoreFailingOn:
    """The real S3 store, except that uploading one named file fails as if S3 went away."""

    def __init__(self, store, failing_name: str):
        self.store, self.failing_name = store, failing_name

    def upload(self, key, src):
        from foundation.errors import StorageUnavailable

        if key.endswith(self.failing_name):
            raise StorageUnavailable(f"injected: {key}")
        self.store.upload(key, src)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_failed_upload_leaves_no_version_and_no_files(server_settings, s3_dataset_uri, first_job, tmp_path):
    from mlflow import MlflowClient

    from foundation.errors import StorageUnavailable
    from training.export import export_onnx
    from training.neural.model import LocalizationNet
    from foundation.object_store import open_store
    from training.registry import ModelRegistry

    name = f"half-{uuid.uuid4().hex[:8]}"
    store = open_store(server_settings.models_uri, server_settings.s3.credentials())
    registry = ModelRegistry(server_settings.mlflow_tracking_uri, name, StoreFailingOn(store, "model.json"))
    info = export_onnx(LocalizationNet(samples=256, preset="tiny").eval(), tmp_path / "model.onnx", samples=256)
    data = open_dataset(server_settings, TINY, s3_dataset_uri)
    with pytest.raises(StorageUnavailable):
        registry.publish(run_id=first_job["mlflow"]["run_id"], onnx_path=tmp_path / "model.onnx",
                         card={"onnx": info}, data=data, test_idx=data.indices("test")[:8], median_error_m=1.0,
                         parity_passed=True, tags={"idempotency_key": f"half-{uuid.uuid4().hex[:8]}"})
    assert MlflowClient(server_settings.mlflow_tracking_uri).search_model_versions(f"name='{name}'") == []
    assert store.list(name) == []
