"""The real training child asks for its registration permit before it creates a model version,
registers nothing when refused, and once granted finishes registering whatever SIGTERM comes (a
cancel, the time limit, a shutdown): `python -m training` with a service-made JobSpec, against the
real `mlflow server`, answered by this test over the real protocol pipe as the service would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

from mlflow import MlflowClient

from foundation.child_protocol import (Failed, JobSpec, PermitAnswer, PermitRequest, Result, encode,
                                       parse_child_message)
from foundation.settings import Settings
from foundation.train_config import TrainConfig


def start_child(example_dataset, mlflow_url, tmp_path):
    """The child of a service-made JobSpec (radio map: no Lightning fit), its settings and its messages' pipe."""
    settings = Settings(state_dir=tmp_path / "state", mlflow_tracking_uri=mlflow_url,
                        model_name=f"permit-{uuid.uuid4().hex[:8]}")
    spec = JobSpec(data_uri=str(example_dataset), config=TrainConfig(preset="radio-map"),
                   checkpoint_dir=tmp_path / "ckpt", registration_permit=True)
    (tmp_path / "job.json").write_text(spec.model_dump_json())
    read_fd, write_fd = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    child = subprocess.Popen([sys.executable, "-m", "training", "--spec", str(tmp_path / "job.json"),
                              "--protocol-fd", str(write_fd)], pass_fds=(write_fd,), stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**env, "HEIMDALL_SETTINGS_JSON": settings.serialised()})
    os.close(write_fd)
    return child, settings, os.fdopen(read_fd, "rb")


def answer(child, request: PermitRequest, granted: bool) -> None:
    child.stdin.write(encode(PermitAnswer(request_id=request.request_id, granted=granted)))
    child.stdin.flush()


def test_the_permit_is_asked_before_any_version_exists_and_a_refusal_registers_nothing(
        example_dataset, mlflow_url, tmp_path):
    child, settings, messages = start_child(example_dataset, mlflow_url, tmp_path)
    client, versions_when_asked, ending = MlflowClient(mlflow_url), None, None
    with messages:
        for line in messages:
            message = parse_child_message(line)
            if isinstance(message, PermitRequest):
                versions_when_asked = client.search_model_versions(f"name='{settings.model_name}'")
                answer(child, message, granted=False)
            elif isinstance(message, (Failed, Result)):
                ending = message
    assert child.wait(timeout=120) == 1
    assert versions_when_asked == []  # asked before create_model_version, not after
    assert isinstance(ending, Failed) and ending.failure.stage == "register" and not ending.failure.retryable
    assert client.search_model_versions(f"name='{settings.model_name}'") == []


def test_a_sigterm_once_the_permit_is_granted_lets_the_registration_finish(example_dataset, mlflow_url, tmp_path):
    """A cancel arriving just after the permit: the child registers in full and says so, never leaving
    a half-made version or a champion moved by a job that then ends cancelled."""
    child, settings, messages = start_child(example_dataset, mlflow_url, tmp_path)
    results = []
    with messages:
        for line in messages:
            message = parse_child_message(line)
            if isinstance(message, PermitRequest):
                answer(child, message, granted=True)
                child.send_signal(signal.SIGTERM)  # the service's stop, inside the registration window
            elif isinstance(message, Result):
                results.append(message.result)
    assert child.wait(timeout=120) == 0 and len(results) == 1
    [version] = MlflowClient(mlflow_url).search_model_versions(f"name='{settings.model_name}'")
    assert version.tags["registration"] == "complete" and int(version.version) == results[0]["model"]["model_version"]
