"""Distributed training through Lightning on the CPU: DDP over gloo, against the real S3 and MLflow servers.

Lightning's `ddp` launcher re-executes `sys.argv` for the extra ranks, so every run here is the
`train` command in a child process (as the service runs it), never `fit` inside pytest. The
wall time of each run is printed (`pytest -s`), not asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from training.datasets.synth import SynthConfig, synthesize_dataset
from foundation.exit_codes import EXIT_INTERRUPTED, EXIT_OK
from foundation.object_store import S3Credentials
from tests.support.servers import free_port

CLI = [sys.executable, "-m", "cli", "train"]
FLAGS = ["--preset", "tiny", "--batch_size", "32", "--accelerator", "cpu", "--json"]
RUN_TIMEOUT_S = 400


@pytest.fixture(scope="module")
def ddp_dataset(s3_server) -> str:
    credentials = S3Credentials(endpoint_url=s3_server.endpoint_url, access_key_id=s3_server.access_key_id,
                                secret_access_key=s3_server.secret_access_key, region="us-east-1")
    cfg = SynthConfig(sessions=240, seed=5, samples_per_capture=256, shard_size=128, dataset_id="ddp-tiny")
    return synthesize_dataset(cfg, "s3://heimdall-datasets/ddp", credentials=credentials)


@pytest.fixture
def job_env(s3_server, mlflow_url, tmp_path) -> dict[str, str]:
    """The settings a `train` child reads: models in S3, MLflow on the server, a model name of its own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    return {**clean, "HEIMDALL_STATE_DIR": str(tmp_path / "state"), "HEIMDALL_MLFLOW_TRACKING_URI": mlflow_url,
            "HEIMDALL_MODELS_URI": f"s3://heimdall-models/ddp-{uuid.uuid4().hex[:8]}",
            "HEIMDALL_MODEL_NAME": f"ddp-{uuid.uuid4().hex[:8]}",
            "HEIMDALL_S3__ENDPOINT_URL": s3_server.endpoint_url,
            "HEIMDALL_S3__ACCESS_KEY_ID": s3_server.access_key_id,
            "HEIMDALL_S3__SECRET_ACCESS_KEY": s3_server.secret_access_key}


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as stderr:  # its own process group, as the service starts it
        return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                                start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, what: str, started: float) -> tuple[int, str, list[dict]]:
    stdout, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    print(f"{what}: exit {proc.returncode} after {time.monotonic() - started:.1f} s wall")
    return proc.returncode, stdout, parse_lines(log.read_text())


def wait_for_event(proc: subprocess.Popen, log: Path, name: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not events(parse_lines(log.read_text()), name):
        assert proc.poll() is None and time.monotonic() < deadline, f"no {name!r} line: {log.read_text()[-2000:]}"
        time.sleep(0.2)


def parse_lines(stderr: str) -> list[dict]:
    lines = []
    for text in stderr.splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def events(lines: list[dict], name: str) -> list[dict]:
    return [line for line in lines if line.get("event") == name]


def joined_ranks(lines: list[dict]) -> set[str]:
    return {line["msg"].split(",")[0] for line in lines if line.get("msg", "").startswith("Initializing distributed")}


def group_gone(pgid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def model_versions(mlflow_url: str, model_name: str) -> list:
    from mlflow import MlflowClient

    return MlflowClient(mlflow_url).search_model_versions(f"name='{model_name}'")


def test_two_cpu_ranks_train_and_register_exactly_one_model(ddp_dataset, job_env, mlflow_url, tmp_path):
    started, log = time.monotonic(), tmp_path / "train.log"
    proc = start(["--data_dir", ddp_dataset, *FLAGS, "--devices", "2", "--epochs", "2"], job_env, log)
    code, stdout, lines = finish(proc, log, "DDP, 2 CPU ranks, 2 epochs", started)
    assert code == EXIT_OK, lines[-5:]
    assert joined_ranks(lines) == {"Initializing distributed: GLOBAL_RANK: 0", "Initializing distributed: GLOBAL_RANK: 1"}
    result = json.loads(stdout)  # one JSON object, from rank zero alone
    assert {line["job_id"] for line in lines} == {result["job_id"]}  # the extra rank runs the same job
    assert [len(events(lines, e)) for e in ("started", "fitted", "exported", "registered")] == [1, 1, 1, 1]
    assert [line["epoch"] for line in events(lines, "progress")] == [1, 2]
    versions = model_versions(mlflow_url, job_env["HEIMDALL_MODEL_NAME"])
    assert [int(v.version) for v in versions] == [result["model"]["model_version"]] == [1]
    assert versions[0].tags["job_id"] == result["job_id"] and result["training"]["epochs_run"] == 2


def test_sigterm_under_ddp_checkpoints_exits_3_and_a_ddp_resume_goes_on_from_it(ddp_dataset, job_env, mlflow_url,
                                                                                 tmp_path):
    job = ["--data_dir", ddp_dataset, *FLAGS, "--devices", "2", "--epochs", "8", "--patience", "8",
           "--job_id", f"ddp-{uuid.uuid4().hex[:8]}", "--checkpoint_dir", str(tmp_path / "ckpt")]
    started, log = time.monotonic(), tmp_path / "interrupted.log"
    proc = start(job, job_env, log)
    wait_for_event(proc, log, "progress")
    os.killpg(proc.pid, signal.SIGTERM)  # every rank gets it, as from the service's killpg
    code, stdout, lines = finish(proc, log, "DDP under SIGTERM", started)
    assert code == EXIT_INTERRUPTED and stdout == "", lines[-5:]
    assert group_gone(proc.pid, within_s=60)  # no rank is left behind
    [checkpointed] = events(lines, "checkpointed")
    assert checkpointed["reason"] == "SIGTERM"
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == checkpointed["epoch"] >= 1 and len(events(lines, "exported")) == 0
    assert model_versions(mlflow_url, job_env["HEIMDALL_MODEL_NAME"]) == []

    started, log = time.monotonic(), tmp_path / "resumed.log"
    code, stdout, lines = finish(start([*job, "--resume_training"], job_env, log), log, "DDP resume", started)
    assert code == EXIT_OK, lines[-5:]
    assert len(joined_ranks(lines)) == 2
    # on from the interrupted epoch; a SIGTERM seen after the epoch's last training batch leaves that
    # epoch's training done (Lightning then goes on with the next one: its validation is not run)
    done = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]
    assert events(lines, "progress")[0]["epoch"] == saved["epoch"] + (2 if done else 1)
    assert len(events(lines, "registered")) == 1 and json.loads(stdout)["model"]["model_version"] == 1
    assert len(model_versions(mlflow_url, job_env["HEIMDALL_MODEL_NAME"])) == 1


def test_two_nodes_of_a_kubeflow_pytorchjob_train_one_model(ddp_dataset, job_env, mlflow_url, tmp_path):
    """Two "pods" on this machine, each given what the Kubeflow operator sets (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT; one process per pod): `--num_nodes 2 --cluster kubeflow`."""
    job = ["--data_dir", ddp_dataset, *FLAGS, "--devices", "1", "--num_nodes", "2", "--cluster", "kubeflow",
           "--epochs", "2", "--job_id", f"kf-{uuid.uuid4().hex[:8]}"]
    pod = {**job_env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    started = time.monotonic()
    pods = [(start([*job, "--checkpoint_dir", str(tmp_path / "ckpt")], {**pod, "RANK": str(rank)},
                   tmp_path / f"pod{rank}.log"), tmp_path / f"pod{rank}.log") for rank in (0, 1)]
    (code0, stdout0, lines0), (code1, stdout1, lines1) = [finish(p, log, log.stem, started) for p, log in pods]
    assert (code0, code1) == (EXIT_OK, EXIT_OK), (lines0[-3:], lines1[-3:])
    assert joined_ranks(lines0 + lines1) == {"Initializing distributed: GLOBAL_RANK: 0",
                                             "Initializing distributed: GLOBAL_RANK: 1"}
    assert json.loads(stdout0)["model"]["model_version"] == 1 and stdout1 == ""
    assert len(events(lines0, "registered")) == 1 and events(lines1, "registered") == []
    assert len(model_versions(mlflow_url, job_env["HEIMDALL_MODEL_NAME"])) == 1


def test_an_extra_rank_dies_with_rank_zero(ddp_dataset, job_env, tmp_path):
    """Rank zero killed alone (OOM, or the service's kill -9 reaching the child): the rank Lightning
    started for it must not live on to race the job's next attempt."""
    job = ["--data_dir", ddp_dataset, *FLAGS, "--devices", "2", "--epochs", "20", "--patience", "20"]
    log = tmp_path / "orphan.log"
    proc = start(job, job_env, log)
    wait_for_event(proc, log, "progress")
    extra_ranks = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert extra_ranks, "Lightning started no extra rank"
    os.kill(proc.pid, signal.SIGKILL)  # rank zero alone, not its group
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while [pid for pid in extra_ranks if Path(f"/proc/{pid}").exists()
           and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]:
        assert time.monotonic() < deadline, "an extra rank outlived rank zero"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL) if not group_gone(proc.pid, within_s=0) else None
