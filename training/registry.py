"""Publishing a model: object store upload, MLflow model version, aliases and the champion gate.

MLflow's exceptions are translated here and nowhere else. A failure after the version was
created deletes the version and whatever was uploaded, so nothing half-published remains.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.datasets.verified import VerifiedDataset
from foundation.errors import RegistryError, StorageUnavailable
from foundation.logs import log_event
from training.metrics import localization_errors_m
from foundation.object_store import ObjectStore

log = logging.getLogger(__name__)
CANDIDATE, CHAMPION = "candidate", "champion"


@dataclass
class Registration:
    model_name: str
    model_version: int
    aliases: list[str]
    promoted: bool
    model_uri: str
    onnx: dict  # uri, sha256, bytes
    card_uri: str
    champion_median_error_m: float | None  # the previous champion on the same sessions, when comparable

    def to_dict(self) -> dict:
        return asdict(self)


def score_onnx(onnx_path: Path, data: VerifiedDataset, indices: np.ndarray) -> float | None:
    """Median error of an ONNX model on the given sessions; None when its input shape cannot take them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    samples = session.get_inputs()[0].shape[2]
    if samples != data.manifest.samples_per_capture:
        return None
    errors = []
    for chunk, iq, online, rx in data.chunks(indices):
        position, _ = session.run(None, {"iq": iq, "rx_position": rx, "rx_online": online})
        errors.append(localization_errors_m(position.astype(np.float64), data.emitter[chunk, :2]))
    return float(np.median(np.concatenate(errors)))


@contextmanager
def mlflow_errors(what: str):
    """Translate MLflow's failures into RegistryError; unreachable or 5xx is retryable."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        yield
    except MlflowException as exc:
        raise RegistryError(f"MLflow {what}: {exc.message}", retryable=exc.get_http_status_code() >= 500) from exc
    except (RequestException, ConnectionError) as exc:
        raise RegistryError(f"MLflow {what}: {exc}", retryable=True) from exc


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None) -> None:
    """Create the MLflow experiment unless it exists. Two replicas starting jobs at the same moment
    would otherwise race inside Lightning's logger, and the loser would fail its job."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with mlflow_errors("create experiment"):
        try:
            MlflowClient(tracking_uri=tracking_uri).create_experiment(name, artifact_location=artifact_location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


class ModelRegistry:
    def __init__(self, tracking_uri: str, model_name: str, store: ObjectStore):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.tracking_uri, self.model_name, self.store = tracking_uri, model_name, store

    def _call(self, what: str, fn, *args, **kwargs):
        with mlflow_errors(what):
            return fn(*args, **kwargs)

    def ensure_registered_model(self) -> None:
        """Create the registered model unless it exists; another replica may create it at the same moment."""
        from mlflow.exceptions import MlflowException

        with mlflow_errors("create registered model"):
            try:
                self.client.create_registered_model(self.model_name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

    def _versions_of(self, idempotency_key: str) -> list[int]:
        versions = self._call("search versions", self.client.search_model_versions,
                              f"name='{self.model_name}' and tags.idempotency_key='{idempotency_key}'")
        return [int(v.version) for v in versions]

    def find(self, idempotency_key: str) -> tuple[Registration, dict] | None:
        """The version already registered for this key, with its card, if its files are in the store."""
        versions = self._call("search versions", self.client.search_model_versions,
                              f"name='{self.model_name}' and tags.idempotency_key='{idempotency_key}'")
        for version in sorted(versions, key=lambda v: int(v.version)):
            prefix = f"{self.model_name}/{version.version}"
            if not self.store.exists(f"{prefix}/model.json"):
                log.warning("version %s has no model.json in the store; ignored", version.version)
                continue
            card = json.loads(self.store.read_bytes(f"{prefix}/model.json"))
            # search results carry no aliases; a plain get does
            current = self._call("get version", self.client.get_model_version, self.model_name, version.version)
            aliases = sorted(current.aliases)
            return Registration(
                model_name=self.model_name, model_version=int(version.version), aliases=aliases,
                promoted=CHAMPION in aliases, model_uri=f"models:/{self.model_name}/{version.version}",
                onnx={"uri": self.store.uri_of(f"{prefix}/model.onnx"), "sha256": card["onnx"]["sha256"],
                      "bytes": card["onnx"]["bytes"]},
                card_uri=self.store.uri_of(f"{prefix}/model.json"), champion_median_error_m=None), card
        return None

    def champion_onnx(self, workdir: Path) -> tuple[int, Path] | None:
        """The current champion's version and a local copy of its model.onnx; None only when there
        is no champion. Any other failure raises RegistryError: the gate never fails open."""
        from mlflow.exceptions import MlflowException

        with mlflow_errors("read champion"):
            try:
                version = self.client.get_model_version_by_alias(self.model_name, CHAMPION)
            except MlflowException as exc:
                no_champion = exc.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
                if no_champion and "not found" in exc.message:
                    return None
                raise
        import mlflow.artifacts

        path = self._call("download champion", mlflow.artifacts.download_artifacts,
                          artifact_uri=f"{version.source}/model.onnx", dst_path=str(workdir),
                          tracking_uri=self.tracking_uri)
        return int(version.version), Path(path)

    def publish(self, *, run_id: str, onnx_path: Path, card: dict, data: VerifiedDataset, test_idx: np.ndarray,
                median_error_m: float, parity_passed: bool, tags: dict[str, str],
                permit: Callable[[], bool] | None = None) -> Registration:
        """Create a version, upload model.onnx + model.json, set aliases. Raises RegistryError, StorageUnavailable.

        MLflow gives two concurrent creations two versions, so the version is fenced: `permit`
        (the service's lease check) right before creating, and after creating, the lowest version
        tagged with this idempotency key wins; a loser deletes its own and fails retryable, so its
        next attempt finds the winner."""
        self.ensure_registered_model()
        with tempfile.TemporaryDirectory() as tmp:
            champion = self.champion_onnx(Path(tmp))
            champion_median = score_onnx(champion[1], data, test_idx) if champion else None
        promoted = parity_passed and (champion is None or (champion_median is not None and median_error_m <= champion_median))
        log_event(log, "champion gate", stage="register", champion_version=champion and champion[0],
                  champion_median_error_m=champion_median, median_error_m=median_error_m, promoted=promoted)
        run = self._call("get run", self.client.get_run, run_id)
        key = tags["idempotency_key"]
        if self._versions_of(key):
            raise RegistryError(f"a version for {key} was registered meanwhile; the next attempt reports it",
                                retryable=True)
        if permit is not None and not permit():
            raise RegistryError("the service no longer holds this job's claim: not registering", retryable=False)
        version = self._call("create model version", self.client.create_model_version, name=self.model_name,
                             source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags)
        if min(self._versions_of(key)) != int(version.version):
            self._undo(int(version.version))
            raise RegistryError(f"another job registered {key} at the same moment; the next attempt reports it",
                                retryable=True)
        try:
            registration = self._upload(int(version.version), run_id, onnx_path, card, promoted, champion_median)
        except BaseException:
            self._undo(int(version.version))
            raise
        return registration

    def _upload(self, version: int, run_id: str, onnx_path: Path, card: dict, promoted: bool,
                champion_median: float | None) -> Registration:
        card = {**card, "model_version": version}
        prefix = f"{self.model_name}/{version}"
        with tempfile.TemporaryDirectory() as tmp:
            card_path = Path(tmp) / "model.json"
            card_path.write_text(json.dumps(card, indent=2))
            self._call("log artifacts", self.client.log_artifact, run_id, str(onnx_path), "model")
            self._call("log artifacts", self.client.log_artifact, run_id, str(card_path), "model")
            self.store.upload(f"{prefix}/model.onnx", onnx_path)
            self.store.upload(f"{prefix}/model.json", card_path)
        aliases = [CANDIDATE] + ([CHAMPION] if promoted else [])
        for alias in aliases:
            self._set_alias(alias, version)
        return Registration(
            model_name=self.model_name, model_version=version, aliases=aliases, promoted=promoted,
            model_uri=f"models:/{self.model_name}/{version}",
            onnx={"uri": self.store.uri_of(f"{prefix}/model.onnx"), "sha256": card["onnx"]["sha256"],
                  "bytes": card["onnx"]["bytes"]},
            card_uri=self.store.uri_of(f"{prefix}/model.json"), champion_median_error_m=champion_median)

    def _set_alias(self, alias: str, version: int, tries: int = 5) -> None:
        """Set an alias; two replicas moving the same alias at once can make MLflow's SQL store
        report a unique-constraint clash (400), which a retry a moment later resolves."""
        for attempt in range(1, tries + 1):
            try:
                return self._call("set alias", self.client.set_registered_model_alias, self.model_name, alias,
                                  str(version))
            except RegistryError:
                if attempt == tries:
                    raise
                time.sleep(0.2 * attempt)

    def _undo(self, version: int) -> None:
        prefix = f"{self.model_name}/{version}"
        for key in (f"{prefix}/model.onnx", f"{prefix}/model.json"):
            try:
                self.store.delete(key)
            except (StorageUnavailable, OSError):
                log.warning("could not delete %s while undoing version %s", key, version)
        try:
            self.client.delete_model_version(self.model_name, str(version))
        except Exception:  # the original error matters more; this one is only logged
            log.warning("could not delete model version %s", version, exc_info=True)
