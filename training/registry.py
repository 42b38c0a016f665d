"""Publishing a model: an MLflow model version that is a complete MLflow model (`mlflow_model`), its
files in object storage, the champion gate, the version's facts (`version_facts`) and its aliases.

Registration resumes. The version's source, the MLflow model in the run's `model/` folder, is
logged before the version exists, and the version is created tagged `registration: pending` with
every fact the rest needs, the gate's decision among them. Then come the card with its version
number, model.onnx and model.json in the store, the description, the aliases, and last the tag
`registration: complete`. Each step after the creation can run again from the version alone, so
a process that dies anywhere in between (kill -9, OOM, a SIGTERM outside `fit`) leaves a version
that the next attempt's `find` completes, never a key that no attempt can register. A failure the
process sees while writing the files deletes the version and its files (should MLflow be away for
that, the next attempt completes the version instead); from the description on, nothing is undone:
the aliases may have moved, and the next attempt completes what is left.

MLflow's failures come out as RegistryError (`mlflow_calls.mlflow_errors`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from foundation.errors import RegistryError
from foundation.logs import log_event
from foundation.object_store import ObjectStore
from training.champion_gate import GateDecision, judge
from training.datasets.verified import VerifiedDataset
from training.mlflow_calls import create_unless_exists, mlflow_errors
from training.mlflow_model import CARD_FILE, ONNX_FILE, write_card, write_model_folder
from training.version_facts import describe, version_tags

log = logging.getLogger(__name__)
CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_DIR = "model"  # the run's artifact folder that is the version's source
STATE, PENDING, COMPLETE = "registration", "pending", "complete"  # the version tag that says how far it got


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
    gate: GateDecision | None = None  # the champion gate's decision as applied (None: a version without gate tags)

    def to_dict(self) -> dict:
        return asdict(self)


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
        create_unless_exists("create registered model", self.client.create_registered_model, self.model_name)

    def _versions_of(self, idempotency_key: str) -> list:
        """The versions tagged with this key, oldest first (search results carry tags, not aliases)."""
        versions = self._call("search versions", self.client.search_model_versions,
                              f"name='{self.model_name}' and tags.idempotency_key='{idempotency_key}'")
        return sorted(versions, key=lambda v: int(v.version))

    def find(self, idempotency_key: str) -> tuple[Registration, dict] | None:
        """The version registered for this key, with its card. One that a dead process left pending is
        completed first; pending versions beside the one kept (a fence's losers) are deleted."""
        versions = self._versions_of(idempotency_key)
        pending = [v for v in versions if v.tags.get(STATE) == PENDING]
        finished = [v for v in versions if v.tags.get(STATE) != PENDING and self._published(v)]
        kept = (finished or pending or [None])[0]
        for loser in pending:
            if loser is not kept:
                self._undo(int(loser.version))
        if kept is None:
            return None
        return self._registered(kept) if finished else self._resume(kept)

    def _published(self, version) -> bool:
        if self.store.exists(f"{self.model_name}/{version.version}/{CARD_FILE}"):
            return True
        log.warning("version %s has no model.json in the store; ignored", version.version)
        return False

    def _registered(self, version) -> tuple[Registration, dict]:
        card = json.loads(self.store.read_bytes(f"{self.model_name}/{version.version}/{CARD_FILE}"))
        # search results carry no aliases; a plain get does
        current = self._call("get version", self.client.get_model_version, self.model_name, version.version)
        aliases = sorted(current.aliases)
        gate = GateDecision.from_tags(version.tags) if "gate_promoted" in version.tags else None
        return self._registration(int(version.version), aliases, CHAMPION in aliases, card, None, gate), card

    def _resume(self, version) -> tuple[Registration, dict]:
        """Complete a registration from the version alone: its source holds model.onnx and the card,
        its tags the facts and the gate's decision."""
        number = int(version.version)
        log_event(log, "completing an unfinished registration", stage="register", model_version=number)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = self._download(f"{version.source}/{ONNX_FILE}", Path(tmp))
            card = json.loads(self._download(f"{version.source}/{CARD_FILE}", Path(tmp)).read_text())
            card = self._write_files(number, version.run_id, onnx_path, card)
        return self._settle(number, dict(version.tags), card), card

    def _champion(self):
        """The version the `champion` alias names; None only when there is none."""
        from mlflow.exceptions import MlflowException

        with mlflow_errors("read champion"):
            try:
                return self.client.get_model_version_by_alias(self.model_name, CHAMPION)
            except MlflowException as exc:
                no_champion = exc.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
                if no_champion and "not found" in exc.message:
                    return None
                raise

    def champion_onnx(self, workdir: Path) -> tuple[int, Path] | None:
        """The current champion's version and a local copy of its model.onnx; None only when there
        is no champion. Any other failure raises RegistryError: the gate never fails open."""
        version = self._champion()
        if version is None:
            return None
        return int(version.version), self._download(f"{version.source}/{ONNX_FILE}", workdir)

    def _download(self, artifact_uri: str, workdir: Path) -> Path:
        import mlflow.artifacts

        return Path(self._call(f"download {artifact_uri}", mlflow.artifacts.download_artifacts,
                               artifact_uri=artifact_uri, dst_path=str(workdir), tracking_uri=self.tracking_uri))

    def _gate(self, data: VerifiedDataset, test_idx: np.ndarray, onnx_path: Path, parity_passed: bool) -> GateDecision:
        with tempfile.TemporaryDirectory() as tmp:
            return judge(self.champion_onnx(Path(tmp)), onnx_path, data, test_idx, parity_passed)

    def publish(self, *, run_id: str, onnx_path: Path, card: dict, data: VerifiedDataset, test_idx: np.ndarray,
                median_error_m: float, parity_passed: bool, tags: dict[str, str],
                permit: Callable[[], bool] | None = None, baselines: dict[str, dict] | None = None) -> Registration:
        """Log the MLflow model, create a version, then complete it (`_write_files`, `_settle`).
        `baselines`: their test figures, for the description. Raises RegistryError, StorageUnavailable.

        MLflow gives two concurrent creations two versions, so the version is fenced: `permit`
        (the service's lease check) right before creating, and after creating, the lowest version
        tagged with this idempotency key wins; a loser deletes its own and fails retryable, so its
        next attempt finds the winner."""
        self.ensure_registered_model()
        decision = self._gate(data, test_idx, onnx_path, parity_passed)
        key = tags["idempotency_key"]
        if self._versions_of(key):
            raise RegistryError(f"a version for {key} was registered meanwhile; the next attempt reports it",
                                retryable=True)
        iq, online, rx = data.model_inputs(test_idx[:1])
        source = self._log_model(run_id, onnx_path, card, {"iq": iq, "rx_position": rx, "rx_online": online})
        metrics = {**card.get("metrics", {}), "median_error_m": median_error_m}
        tags = {**tags, **version_tags(data, metrics, baselines or {}, decision), STATE: PENDING}
        if permit is not None and not permit():
            raise RegistryError("the service no longer holds this job's claim: not registering", retryable=False)
        version = int(self._call("create model version", self.client.create_model_version, name=self.model_name,
                                 source=source, run_id=run_id, tags=tags).version)
        if int(self._versions_of(key)[0].version) != version:
            self._undo(version)
            raise RegistryError(f"another job registered {key} at the same moment; the next attempt reports it",
                                retryable=True)
        try:
            card = self._write_files(version, run_id, onnx_path, card)
        except BaseException:
            self._undo(version)
            raise
        return self._settle(version, tags, card)

    def _log_model(self, run_id: str, onnx_path: Path, card: dict, example: dict[str, np.ndarray]) -> str:
        """The MLflow model, with the plots the job logged on its run, in the run's `model/` folder. Its URI."""
        run = self._call("get run", self.client.get_run, run_id)
        with tempfile.TemporaryDirectory() as tmp:
            listed = self._call("list plots", self.client.list_artifacts, run_id, "plots")
            plots = [Path(self._call("download plots", self.client.download_artifacts, run_id, plot.path, tmp))
                     for plot in listed if not plot.is_dir]
            folder = write_model_folder(Path(tmp) / MODEL_DIR, onnx_path, card, example, plots)
            self._call("log the model", self.client.log_artifacts, run_id, str(folder), MODEL_DIR)
        return f"{run.info.artifact_uri}/{MODEL_DIR}"

    def _write_files(self, version: int, run_id: str, onnx_path: Path, card: dict) -> dict:
        """The card with its version number, on the run's model and in the store beside model.onnx."""
        card = {**card, "model_version": version}
        prefix = f"{self.model_name}/{version}"
        with tempfile.TemporaryDirectory() as tmp:
            card_path = write_card(Path(tmp) / CARD_FILE, card)
            self._call("log the card", self.client.log_artifact, run_id, str(card_path), MODEL_DIR)
            self.store.upload(f"{prefix}/{ONNX_FILE}", onnx_path)
            self.store.upload(f"{prefix}/{CARD_FILE}", card_path)
        return card

    def _settle(self, version: int, tags: dict[str, str], card: dict) -> Registration:
        """The gate's decision as it stands now, the description, the aliases, then `complete`."""
        champion = self._champion()
        decision = GateDecision.from_tags(tags).at_completion(version, champion and int(champion.version))
        for key, value in decision.tags().items():
            if tags.get(key) != value:
                self._call("tag version", self.client.set_model_version_tag, self.model_name, str(version), key, value)
        tags = {**tags, **decision.tags()}
        self._call("describe version", self.client.update_model_version, self.model_name, str(version),
                   describe(tags))
        aliases = [CANDIDATE] + ([CHAMPION] if decision.promoted else [])
        for alias in aliases:
            self._set_alias(alias, version)
        self._call("tag version", self.client.set_model_version_tag, self.model_name, str(version), STATE, COMPLETE)
        return self._registration(version, aliases, decision.promoted, card, decision.champion_median_error_m,
                                  decision)

    def _registration(self, version: int, aliases: list[str], promoted: bool, card: dict,
                      champion_median: float | None, gate: GateDecision | None = None) -> Registration:
        prefix = f"{self.model_name}/{version}"
        return Registration(
            model_name=self.model_name, model_version=version, aliases=aliases, promoted=promoted,
            model_uri=f"models:/{self.model_name}/{version}",
            onnx={"uri": self.store.uri_of(f"{prefix}/{ONNX_FILE}"), "sha256": card["onnx"]["sha256"],
                  "bytes": card["onnx"]["bytes"]},
            card_uri=self.store.uri_of(f"{prefix}/{CARD_FILE}"), champion_median_error_m=champion_median, gate=gate)

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
        """Delete a version that is still pending, and its files. One that another process completed
        meanwhile stays; one MLflow cannot be asked about stays too, for the next attempt to complete."""
        try:
            if self.client.get_model_version(self.model_name, str(version)).tags.get(STATE) != PENDING:
                return
            prefix = f"{self.model_name}/{version}"
            for key in (f"{prefix}/{ONNX_FILE}", f"{prefix}/{CARD_FILE}"):
                self.store.delete(key)
            self.client.delete_model_version(self.model_name, str(version))
        except Exception:  # the original error matters more; this one is only logged
            log.warning("could not undo model version %s", version, exc_info=True)
