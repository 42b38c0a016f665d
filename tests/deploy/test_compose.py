"""deploy/docker-compose.yml, checked without Docker: valid under the Compose specification, its
cross-references resolve, every HEIMDALL_* variable it sets is a setting the service accepts,
and its ports and health check are the service's own. It needs no GPU: its jobs fit the radio map on
the CPU; the override deploy/docker-compose.gpu.yml reserves one and trains the default model on it.

`tests/deploy/compose-spec.json` is the Compose specification's JSON schema, copied unchanged from
github.com/compose-spec/compose-spec, `schema/compose-spec.json` at commit 170098ba07d9
(2026-06-23). `docker compose config` needs the compose plugin, which these machines lack.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema
import pytest
import yaml

from foundation.settings import ENV_PREFIX, S3Settings, Settings, load_settings
from foundation.train_config import TrainConfig
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "deploy" / "docker-compose.gpu.yml"
GPU_OVERLAY_CONFIG = ROOT / "deploy" / "k8s" / "overlays" / "gpu" / "configmap-training.yaml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
HEALTH_CHECK = ["CMD", "heimdall-training", "serve", "--check"]
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def merged(base: dict, override: dict) -> dict:
    """Compose's merge of an override file, for what ours sets: mappings merge key by key, a key the
    base lacks is added. (Compose merges some sequences, e.g. `ports`, by item; the override sets none.)"""
    both = {key: merged(base[key], value) for key, value in override.items()
            if isinstance(value, dict) and isinstance(base.get(key), dict)}
    return {**base, **override, **both}


def compose(*overrides: Path) -> dict:
    """The compose file as `docker compose -f deploy/docker-compose.yml -f OVERRIDE...` reads it."""
    doc = yaml.safe_load(COMPOSE.read_text())
    for override in overrides:
        doc = merged(doc, yaml.safe_load(override.read_text()))
    return doc


def environment(service: dict) -> dict[str, str]:
    """A service's environment as compose passes it: defaults interpolated, `$$` unescaped."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: INTERPOLATION.sub(lambda m: m.group(2) or "", str(value)).replace("$$", "$")
            for key, value in env.items()}


def training(*overrides: Path) -> dict:
    return compose(*overrides)["services"]["training"]


def service_settings(service: dict, clean_env) -> Settings:
    """What the service starts with in this container: its own check refuses an unknown or invalid value."""
    for key, value in environment(service).items():
        if key.startswith(ENV_PREFIX):
            clean_env.setenv(key, value)
    return load_settings()


def gpu_reservations(service: dict) -> list:
    """What a service asks of the host's GPUs: `deploy` device reservations with the gpu capability, `gpus`."""
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [device for device in devices if "gpu" in device.get("capabilities", [])] + \
        ([service["gpus"]] if "gpus" in service else [])


@pytest.mark.parametrize("overrides", [(), (GPU_OVERRIDE,)], ids=["default", "gpu"])
def test_the_compose_file_is_valid_under_the_compose_specification(overrides):
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    for doc in (compose(*overrides), *(yaml.safe_load(override.read_text()) for override in overrides)):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert errors == []
    misspelt = compose()
    misspelt["services"]["training"]["stop_grace_periods"] = "90s"  # the schema is strict: this must fail
    assert not validator.is_valid(misspelt)


def test_every_dependency_volume_and_host_named_is_defined():
    doc = compose()
    services, volumes = doc["services"], set(doc.get("volumes") or {})
    for name, service in services.items():
        assert set(service.get("depends_on") or {}) <= set(services), name
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0] if isinstance(mount, str) else mount.get("source", "")
            assert source.startswith((".", "/")) or source in volumes, f"{name}: volume {source!r} is not declared"
            assert not source.startswith(".") or (COMPOSE.parent / source).exists(), f"{name}: {source} is missing"
    for key, value in environment(services["training"]).items():
        for host in re.findall(r"(?:amqp|https?|postgresql[+\w]*)://(?:[^@/]*@)?([\w.-]+)", value):
            assert host in services, f"{key} names host {host!r}, which is no service"


@pytest.mark.parametrize("overrides", [(), (GPU_OVERRIDE,)], ids=["default", "gpu"])
def test_every_heimdall_variable_is_a_setting_and_the_service_accepts_its_value(overrides, clean_env):
    env = {k: v for k, v in environment(training(*overrides)).items() if k.startswith(ENV_PREFIX)}
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    fields |= {f"{ENV_PREFIX}S3__{name.upper()}" for name in S3Settings.model_fields}
    assert sorted(set(env) - fields) == []
    dockerfile_env = set(re.findall(r"\b(HEIMDALL_\w+)=", (ROOT / "Dockerfile").read_text()))
    assert dockerfile_env and sorted(dockerfile_env - fields) == []
    settings = service_settings(training(*overrides), clean_env)
    assert settings.models_uri == env["HEIMDALL_MODELS_URI"]
    assert settings.s3.endpoint_url == env["HEIMDALL_S3__ENDPOINT_URL"]
    assert str(settings.state_dir) == env["HEIMDALL_STATE_DIR"]


def test_the_published_port_volume_and_stop_grace_are_the_services_own():
    service, env = training(), environment(training())
    http_port = int(env["HEIMDALL_HTTP_PORT"])
    assert http_port == Settings.model_fields["http_port"].default == 8080
    assert [p.rsplit(":", 1)[-1] for p in service["ports"]] == [str(http_port)]
    assert f"EXPOSE {http_port}" in (ROOT / "Dockerfile").read_text()
    assert [v.split(":")[1] for v in service["volumes"]] == [env["HEIMDALL_STATE_DIR"]]
    stop_grace_s = int(service["stop_grace_period"].removesuffix("s"))
    assert stop_grace_s > Settings.model_fields["shutdown_grace_s"].default  # the job checkpoints before a kill


def test_the_default_stack_reserves_no_gpu_and_its_jobs_train_the_default_model_on_the_cpu(clean_env):
    assert all(gpu_reservations(service) == [] for service in compose()["services"].values())
    jobs_train = TrainConfig(**service_settings(training(), clean_env).default_training)
    assert jobs_train.preset == TrainConfig().preset and jobs_train.accelerator == "cpu"  # the default model


def test_the_gpu_override_reserves_one_gpu_and_its_jobs_train_the_default_model_on_it(clean_env):
    service = training(GPU_OVERRIDE)
    [device] = gpu_reservations(service)
    assert device["driver"] == "nvidia" and device["count"] == 1
    jobs_train = TrainConfig(**service_settings(service, clean_env).default_training)
    assert jobs_train.preset == TrainConfig().preset and jobs_train.accelerator == "gpu"  # the same model, on the GPU
    assert jobs_train.devices == str(device["count"])  # Lightning uses the one GPU the container gets
    k8s_gpu = yaml.safe_load(GPU_OVERLAY_CONFIG.read_text())["data"]["HEIMDALL_DEFAULT_TRAINING"]
    assert json.loads(environment(service)["HEIMDALL_DEFAULT_TRAINING"]) == json.loads(k8s_gpu)  # as on Kubernetes
    assert compose(GPU_OVERRIDE)["services"].keys() == compose()["services"].keys()  # a misspelt name would add one


@pytest.fixture
def healthz_server():
    """A stand-in for the service's probe endpoint: /healthz answers 200, anything else 503."""
    class Probe(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", free_port()), Probe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_the_health_check_is_the_services_probe_and_passes_only_when_it_answers(healthz_server, clean_env):
    service = training()
    assert service["healthcheck"]["test"] == HEALTH_CHECK
    image_check = re.search(r"^HEALTHCHECK .*?CMD (\[[^]]*\])", (ROOT / "Dockerfile").read_text(), re.S | re.M)
    assert json.loads(image_check.group(1)) == HEALTH_CHECK[1:]
    cli = Path(sys.executable).with_name(HEALTH_CHECK[1])

    def probe(port: int) -> int:
        env = {**environment(service), "HEIMDALL_HTTP_PORT": str(port)}
        return subprocess.run([str(cli), *HEALTH_CHECK[2:]], env={"PATH": "/usr/bin:/bin", **env},
                              capture_output=True, timeout=60).returncode

    assert probe(healthz_server) == 0
    assert probe(free_port()) != 0  # nothing listens there
