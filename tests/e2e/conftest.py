"""The whole service against the real servers: synthetic datasets written once per session, and
stacks (a vhost and a job store database each) that a test starts `serve` processes on."""

from __future__ import annotations

import pytest

from tests.support.service_stack import DATASETS_ROOT, Stack


@pytest.fixture(scope="session")
def datasets(s3_server) -> dict[str, str]:
    """Small synthetic datasets under DATASETS_ROOT, written once per session (versions are immutable)."""
    from training.datasets.synth import SynthConfig, synthesize_dataset
    from foundation.object_store import S3Credentials

    credentials = S3Credentials(endpoint_url=s3_server.endpoint_url, access_key_id=s3_server.access_key_id,
                                secret_access_key=s3_server.secret_access_key)
    uris = {}
    for i, name in enumerate(["svc-main", "svc-dup", "svc-cancel", "svc-kill", "svc-r1", "svc-r2", "svc-r3"]):
        cfg = SynthConfig(sessions=240, seed=100 + i, samples_per_capture=256, shard_size=128, dataset_id=name)
        uris[name] = synthesize_dataset(cfg, DATASETS_ROOT, credentials=credentials)
    return uris


@pytest.fixture
def stack_factory(tmp_path, s3_server, mlflow_url, postgres):
    stacks = []

    def make(spare: str = "warm") -> Stack:
        stacks.append(Stack(tmp_path / f"stack{len(stacks)}", s3_server, mlflow_url, postgres))
        stacks[-1].tmp.mkdir()
        stacks[-1].env["HEIMDALL_WARM_SPARE"] = str(spare == "warm").lower()
        return stacks[-1]

    yield make
    for stack in stacks:
        stack.close()
