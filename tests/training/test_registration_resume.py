"""Registration resumes (issue 20, defect 1), against the real `mlflow server` and S3: a process that
dies anywhere between creating the model version and finishing it, or whose undo MLflow could not
hear, leaves a version that the next attempt for the key completes, never a key blocked for ever."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager

import pytest

from foundation.errors import StorageUnavailable
from foundation.object_store import open_store
from foundation.settings import S3Settings, Settings
from foundation.train_config import TrainConfig
from tests.support.cli import CLI, TINY_FLAGS, run_cli
from tests.support.servers import free_port
from training.pipeline import open_dataset
from training.registry import ModelRegistry
from training.tracking import TrackingRun


@contextmanager
def unanswered_endpoint():
    """An S3 endpoint that accepts connections (the kernel's backlog does) and never answers: a
    process that reaches it waits there, aimed, for as long as the test needs."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def credentials(s3_server):
    return S3Settings(endpoint_url=s3_server.endpoint_url, access_key_id=s3_server.access_key_id,
                      secret_access_key=s3_server.secret_access_key).credentials()


def cli_env(model_name: str, s3_server, mlflow_url: str) -> dict[str, str]:
    return {"HEIMDALL_MLFLOW_TRACKING_URI": mlflow_url, "HEIMDALL_MODEL_NAME": model_name,
            "HEIMDALL_MODELS_URI": f"s3://heimdall-models/{model_name}",
            "HEIMDALL_S3__ENDPOINT_URL": s3_server.endpoint_url, "HEIMDALL_S3__ACCESS_KEY_ID": s3_server.access_key_id,
            "HEIMDALL_S3__SECRET_ACCESS_KEY": s3_server.secret_access_key}


def first_version(client, model_name: str, proc: subprocess.Popen, log, timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"train ended ({proc.returncode}) with no version:\n{log.read_text()[-3000:]}"
        versions = client.search_model_versions(f"name='{model_name}'")
        if versions:
            return int(versions[0].version)
        time.sleep(0.2)
    raise AssertionError(f"no version after {timeout_s}s:\n{log.read_text()[-3000:]}")


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_train_stopped_between_creating_its_version_and_uploading_it_is_completed_by_the_next_attempt(
        stop, synth_dataset, tmp_path, s3_server, mlflow_url):
    """The real `train`, its models store an endpoint that never answers: it creates the version,
    then waits on the upload of model.onnx, and is killed there. The next `train` for the same
    dataset and configuration trains nothing and reports that version, now complete."""
    from mlflow import MlflowClient

    model_name = f"resume-{uuid.uuid4().hex[:6]}"
    env = cli_env(model_name, s3_server, mlflow_url)
    client, store = MlflowClient(mlflow_url), open_store(env["HEIMDALL_MODELS_URI"], credentials(s3_server))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    log = tmp_path / "first.log"
    with unanswered_endpoint() as endpoint, open(log, "wb") as out:
        first = subprocess.Popen([*CLI, "train", "--data_dir", str(synth_dataset), *TINY_FLAGS, "--json"],
                                 env={**clean, **env, "HEIMDALL_S3__ENDPOINT_URL": endpoint,
                                      "HEIMDALL_STATE_DIR": str(tmp_path / "state-1")}, stdout=out, stderr=out)
        try:
            version = first_version(client, model_name, first, log)
            assert not store.exists(f"{model_name}/{version}/model.json")  # aimed: created, not uploaded
            first.send_signal(stop)
            assert first.wait(timeout=60) == -stop
        finally:
            first.kill()
    second = run_cli(["train", "--data_dir", str(synth_dataset), *TINY_FLAGS, "--json"], tmp_path / "state-2", **env)
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads(second.stdout)
    assert "already_registered_by" in result and result["model"]["model_version"] == version
    assert result["model"]["promoted"] and result["model"]["aliases"] == ["candidate", "champion"]
    versions = client.search_model_versions(f"name='{model_name}'")
    assert [(v.version, v.tags["registration"]) for v in versions] == [(str(version), "complete")]
    card = json.loads(store.read_bytes(f"{model_name}/{version}/model.json"))
    assert card["model_version"] == version and store.exists(f"{model_name}/{version}/model.onnx")


class ProcessKilled(BaseException):
    """Stands for a kill at this point: nothing in the registry catches a BaseException that is not
    its own undo's, so nothing runs after it there, as nothing would run after a kill -9."""


class DiesAfterSetting:
    """The registry's real MLflow client, except that the process 'dies' right after setting one alias."""

    def __init__(self, client, alias: str):
        self.client, self.alias = client, alias

    def set_registered_model_alias(self, name, alias, version):
        self.client.set_registered_model_alias(name, alias, version)
        if alias == self.alias:
            raise ProcessKilled(alias)

    def __getattr__(self, name):
        return getattr(self.client, name)


class ModelJsonFailsThenMlflowGoes:
    """The real S3 store, except that uploading model.json fails as if S3 went away, and from that
    moment the registry's MLflow is away too (its client then talks to a port nobody listens on)."""

    def __init__(self, store):
        self.store, self.registry = store, None

    def upload(self, key, src):
        from mlflow import MlflowClient

        if key.endswith("model.json"):
            away = f"http://127.0.0.1:{free_port()}"
            self.registry.client = MlflowClient(tracking_uri=away, registry_uri=away)
            raise StorageUnavailable(f"injected: {key}")
        self.store.upload(key, src)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture(scope="module")
def stand_in(synth_dataset, mlflow_url, tmp_path_factory):
    """What publish takes from a job: an untrained network's model.onnx, the data, a run."""
    from training.export import export_onnx
    from training.neural.model import LocalizationNet

    folder = tmp_path_factory.mktemp("stand-in")
    info = export_onnx(LocalizationNet(samples=256, preset="tiny").eval(), folder / "model.onnx", samples=256)
    config = TrainConfig(preset="tiny", min_labelled_sessions=10)
    data = open_dataset(Settings(state_dir=folder), config, str(synth_dataset))
    run = TrackingRun.start(mlflow_url, "registration-resume", None, run_name="stand-in", tags={})
    return {"run_id": run.run_id, "onnx_path": folder / "model.onnx", "card": {"onnx": info}, "data": data,
            "test_idx": data.indices("test")[:8]}


def publish(registry: ModelRegistry, stand_in: dict, key: str):
    return registry.publish(**stand_in, median_error_m=1000.0, parity_passed=True, tags={"idempotency_key": key})


def test_an_mlflow_outage_while_undoing_a_failed_upload_does_not_block_the_key(
        stand_in, s3_server, mlflow_url, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    name, key = f"undo-{uuid.uuid4().hex[:6]}", f"undo-{uuid.uuid4().hex[:6]}"
    store = open_store("s3://heimdall-models/undo", credentials(s3_server))
    failing = ModelJsonFailsThenMlflowGoes(store)
    failing.registry = registry = ModelRegistry(mlflow_url, name, failing)
    with pytest.raises(StorageUnavailable):
        publish(registry, stand_in, key)
    left = MlflowClient(mlflow_url).search_model_versions(f"name='{name}'")
    assert len(left) == 1  # the undo could not delete it

    found = ModelRegistry(mlflow_url, name, store).find(key)  # MLflow is back: the next attempt
    assert found is not None, "the next attempt does not find the version: the key is blocked"
    registration, card = found
    assert registration.model_version == int(left[0].version) == card["model_version"]
    assert registration.promoted and registration.aliases == ["candidate", "champion"]
    assert store.exists(f"{name}/{registration.model_version}/model.onnx")
    versions = MlflowClient(mlflow_url).search_model_versions(f"name='{name}'")
    assert [(v.version, v.tags["registration"]) for v in versions] == [(left[0].version, "complete")]


def test_a_process_that_dies_once_the_champion_moved_is_finished_and_reported_by_the_next_attempt(
        stand_in, s3_server, mlflow_url):
    from mlflow import MlflowClient

    name, key = f"moved-{uuid.uuid4().hex[:6]}", f"moved-{uuid.uuid4().hex[:6]}"
    store = open_store("s3://heimdall-models/moved", credentials(s3_server))
    dying = ModelRegistry(mlflow_url, name, store)
    dying.client = DiesAfterSetting(dying.client, "champion")
    with pytest.raises(ProcessKilled):
        publish(dying, stand_in, key)
    client = MlflowClient(mlflow_url)
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags["registration"] == "pending"  # moved, and not finished: nothing undid it

    registration, _ = ModelRegistry(mlflow_url, name, store).find(key)
    assert registration.model_version == int(champion.version) and registration.promoted
    assert client.get_model_version(name, champion.version).tags["registration"] == "complete"
    assert len(client.search_model_versions(f"name='{name}'")) == 1


def test_a_version_finished_after_the_champion_moved_elsewhere_is_not_promoted(stand_in, s3_server, mlflow_url):
    """Gated when there was no champion, left pending before its aliases; meanwhile another job's
    version became champion. The gate never compared the two, so completing it does not promote it."""
    from mlflow import MlflowClient

    name = f"stale-{uuid.uuid4().hex[:6]}"
    store = open_store("s3://heimdall-models/stale", credentials(s3_server))
    dying = ModelRegistry(mlflow_url, name, store)
    dying.client = DiesAfterSetting(dying.client, "candidate")
    with pytest.raises(ProcessKilled):
        publish(dying, stand_in, "stale-first")
    other = publish(ModelRegistry(mlflow_url, name, store), stand_in, "stale-other")
    assert other.promoted

    stale, _ = ModelRegistry(mlflow_url, name, store).find("stale-first")
    assert not stale.promoted and stale.aliases == ["candidate"]
    client = MlflowClient(mlflow_url)
    assert client.get_model_version_by_alias(name, "champion").version == str(other.model_version)
    version = client.get_model_version(name, str(stale.model_version))
    assert version.tags["gate_promoted"] == "false" and version.tags["registration"] == "complete"
    assert version.description.endswith(f"the champion moved to version {other.model_version} after this version "
                                        f"was compared with no champion.")


def test_a_pending_version_a_fence_loser_left_beside_the_registered_one_is_deleted(stand_in, s3_server, mlflow_url):
    """A loser of the fence that died before deleting its own version: the next `find` reports the
    registered version and deletes the loser's, so one key keeps one version."""
    from mlflow import MlflowClient

    name, key = f"loser-{uuid.uuid4().hex[:6]}", f"loser-{uuid.uuid4().hex[:6]}"
    registry = ModelRegistry(mlflow_url, name, open_store("s3://heimdall-models/loser", credentials(s3_server)))
    kept = publish(registry, stand_in, key)
    client = MlflowClient(mlflow_url)
    winner = client.get_model_version(name, str(kept.model_version))
    client.create_model_version(name, source=winner.source, run_id=winner.run_id,
                                tags={"idempotency_key": key, "registration": "pending"})
    registration, _ = registry.find(key)
    assert registration.model_version == kept.model_version
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == [str(kept.model_version)]
