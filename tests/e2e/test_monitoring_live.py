"""Monitoring proven to fire: Prometheus (the server from Debian's `prometheus` package) scrapes a
real `serve` and RabbitMQ with the project's scrape config and alert rules. A job that fails for
good fires HeimdallTrainingJobFailed, a refused message fires HeimdallTrainingDeadLetters, and
every query of the Grafana dashboard returns data. Grafana itself cannot be installed here, so its
panels' queries are run against this Prometheus through the HTTP API that Grafana would use.

Only the generated copies differ from deploy/prometheus/: the targets are this machine's ports,
scrape and rule evaluation run every second, and the rules have no `for:` (minutes of `pending`
would only slow the test). Every expression is the project's own, unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import yaml

from tests.support.servers import free_port, running, wait_until
from tests.support.service_stack import DATASETS_ROOT, dataset_ready

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES, SCRAPE = DEPLOY / "prometheus" / "alerts.yml", DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "heimdall-training.json"
RABBITMQ_METRICS = "127.0.0.1:15692"  # the rabbitmq_prometheus plugin, enabled by deploy/services.sh
WAIT_S = 60  # scrapes and evaluations run every second; RabbitMQ refreshes queue metrics every 5 s


class PrometheusApi:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
            return response.status == 200

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def rule(self, name: str) -> dict:
        return next(rule for group in self.get("/api/v1/rules")["groups"] for rule in group["rules"]
                    if rule["name"] == name)

    def firing(self, alertname: str, **labels) -> list[dict]:
        return [alert for alert in self.get("/api/v1/alerts")["alerts"]
                if alert["state"] == "firing" and alert["labels"]["alertname"] == alertname
                and all(alert["labels"].get(k) == v for k, v in labels.items())]

    def wait_for(self, what: str, check):
        """The first truthy answer of `check()`, within WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while not (found := check()):
            assert time.monotonic() < deadline, f"Prometheus: no {what} within {WAIT_S} s"
            time.sleep(0.5)
        return found


def rules_without_for(tmp: Path) -> Path:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    path = tmp / "alerts.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


def scrape_config(tmp: Path, service_port: int) -> Path:
    config = yaml.safe_load(SCRAPE.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules_without_for(tmp))]
    targets = {"heimdall-training": f"127.0.0.1:{service_port}", "rabbitmq-queues": RABBITMQ_METRICS}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def prometheus(tmp: Path, service_port: int):
    """Our own server on a free port with its own storage, stopped at the end (never the system service)."""
    binary = shutil.which("prometheus")
    assert binary, "no `prometheus` on PATH: `bash deploy/services.sh` installs Debian's prometheus package"
    port, log = free_port(), tmp / "prometheus.log"
    command = [binary, f"--config.file={scrape_config(tmp, service_port)}", f"--storage.tsdb.path={tmp / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{port}"]
    with running(command, {}, log) as process:
        api = PrometheusApi(f"http://127.0.0.1:{port}")
        wait_until(api.ready, "prometheus", 30, process, log)
        api.wait_for("scrape of both targets (RabbitMQ's needs `bash deploy/services.sh`)", lambda: {
            s["metric"]["job"] for s in api.query("up == 1")} == {"heimdall-training", "rabbitmq-queues"})
        yield api


def finite(samples: list[dict]) -> list[dict]:
    return [sample for sample in samples if not math.isnan(float(sample["value"][1]))]


def dashboard_queries() -> dict[str, list[str]]:
    return {panel["title"]: [target["expr"] for target in panel["targets"]]
            for panel in json.loads(DASHBOARD.read_text())["panels"]}


def assert_quiet_before_any_job(api: PrometheusApi) -> None:
    """Evaluated after the service's `failed` count (0) was scraped, the failed-jobs rule is inactive;
    and with no success yet, "Time since last success" has no data (not 56 years)."""
    api.wait_for("failed-job count", lambda: api.query('heimdall_training_jobs{state="failed"}'))
    before = api.rule("HeimdallTrainingJobFailed")["lastEvaluation"]
    rule = api.wait_for("later evaluation", lambda: next(
        (r for r in [api.rule("HeimdallTrainingJobFailed")] if r["lastEvaluation"] != before), None))
    assert (rule["health"], rule["state"]) == ("ok", "inactive"), rule
    assert api.query('max(heimdall_training_jobs{state="failed"})')[0]["value"][1] == "0"
    assert api.query("heimdall_training_last_success_timestamp_seconds")  # scraped, reading 0
    assert api.query(dashboard_queries()["Time since last success"][0]) == []


def assert_every_panel_has_data(api: PrometheusApi) -> None:
    """Each query of each panel returns a number (NaN draws nothing), and says what happened."""
    queries = dashboard_queries()
    for title, exprs in queries.items():
        for expr in exprs:
            api.wait_for(f"number for panel {title!r}: {expr}", lambda: finite(api.query(expr)))
    by_state = {s["metric"]["state"]: s["value"][1] for s in api.query(queries["Jobs by state"][0])}
    assert (by_state["succeeded"], by_state["failed"], by_state["queued"]) == ("1", "1", "0"), by_state
    since_success = api.query(queries["Time since last success"][0])
    assert 0 <= float(since_success[0]["value"][1]) < WAIT_S * 5, since_success
    for expr in queries["Job duration"]:  # the first run of each outcome counts too
        api.wait_for(f"durations of the success and the failure: {expr}", lambda: {
            s["metric"]["outcome"] for s in finite(api.query(expr))} >= {"succeeded", "failed"})


def test_a_final_failure_and_a_dead_letter_fire_their_alerts_and_every_panel_has_data(stack_factory, datasets,
                                                                                       s3_server, tmp_path):
    stack = stack_factory()
    service = stack.start()
    with prometheus(tmp_path, service.port) as api:
        assert_quiet_before_any_job(api)
        stack.publish(dataset_ready("svc-main", 1, datasets["svc-main"]), "dataset.ready")
        stack.tap.wait_for("model.registered")

        # A manifest that names the dataset and nothing else passes intake; the child refuses it at
        # the data stage, not retryable, so the job fails for good at its first attempt.
        broken = f"{DATASETS_ROOT}/svc-broken/v1"
        bucket, _, prefix = broken.removeprefix("s3://").partition("/")
        s3_server.client().put_object(Bucket=bucket, Key=f"{prefix}/dataset.json",
                                      Body=json.dumps({"dataset_id": "svc-broken", "version": 1}).encode())
        stack.publish(dataset_ready("svc-broken", 1, broken), "dataset.ready")
        failed = stack.tap.wait_for("training.failed")[0]["data"]
        assert (failed["stage"], failed["retryable"]) == ("data", False), failed
        alert = api.wait_for("firing HeimdallTrainingJobFailed", lambda: api.firing("HeimdallTrainingJobFailed"))
        assert alert[0]["annotations"]["summary"] == "1 training job(s) failed for good in the last 10 minutes"

        stack.publish(b"{not json", "dataset.ready", message_id="m-malformed")
        dead = api.wait_for("firing HeimdallTrainingDeadLetters",
                            lambda: api.firing("HeimdallTrainingDeadLetters", vhost=stack.vhost.name))
        assert dead[0]["labels"]["queue"] == "heimdall.training.datasets.dead-letter", dead
        assert_every_panel_has_data(api)
