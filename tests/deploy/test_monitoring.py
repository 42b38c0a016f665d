"""The operators' side of deploy/: alert rules that promtool accepts and that fire on example
series, a dashboard whose queries parse, and not one metric name the service does not export.

`promtool` comes from Debian's `prometheus` package; deploy/services.sh installs it when missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import ServiceMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "heimdall-training.json"
# rabbitmq_prometheus's queue_coarse_metrics family, as /metrics/detailed names it (prefix
# rabbitmq_detailed_): deps/rabbitmq_prometheus/src/collectors/prometheus_rabbitmq_core_metrics_collector.erl
RABBITMQ_DETAILED = {f"rabbitmq_detailed_{name}" for name in
                     ("queue_messages_ready", "queue_messages_unacked", "queue_messages", "queue_process_reductions_total")}
METRIC_NAME = re.compile(r"\b((?:heimdall|rabbitmq)_[a-z_]+)\b")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not on PATH: `bash deploy/services.sh` installs Debian's prometheus package"
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS)


def dashboard_exprs() -> list[str]:
    return [t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel["targets"]]


def alert_exprs() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
            for rule in group["rules"]]


def exported_names() -> set[str]:
    """Every sample name ServiceMetrics can expose: histograms as _bucket/_sum/_count, counters as _total."""
    names = set()
    for family in text_string_to_metric_families(ServiceMetrics().render().decode()):
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_the_alert_rules_and_the_scrape_config_are_valid(promtool):
    for args in (("check", "rules", "alerts.yml"), ("check", "config", "prometheus.yml")):
        done = run_promtool(promtool, *args)
        assert done.returncode == 0, done.stdout + done.stderr


def test_each_alert_fires_on_its_example_series_and_stays_quiet_otherwise(promtool):
    done = run_promtool(promtool, "test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts_test.yml").read_text()))
    rules = {rule["alert"] for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
             for rule in group["rules"]}
    assert rules == tested == {"HeimdallTrainingNoSuccess", "HeimdallTrainingJobFailed", "HeimdallTrainingDeadLetters",
                               "HeimdallTrainingOutboxNotDraining", "HeimdallTrainingReplicaDown"}


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": expr}
                                                        for i, expr in enumerate(dashboard_exprs())]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(tmp_path / "dashboard_rules.yml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_has_the_panels_operators_need():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert titles >= {"Jobs by state", "Queue lag", "Job duration", "Time since last success",
                      "Dead-letter queue depth", "Outbox backlog"}
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    assert uids == {datasource["datasources"][0]["uid"]}


def test_every_metric_the_dashboard_and_the_rules_name_exists():
    named = {name for expr in dashboard_exprs() + alert_exprs() for name in METRIC_NAME.findall(expr)}
    heimdall = {n for n in named if n.startswith("heimdall_")}
    assert heimdall and not heimdall - exported_names(), heimdall - exported_names()
    rabbitmq = named - heimdall
    assert rabbitmq and not rabbitmq - RABBITMQ_DETAILED, rabbitmq - RABBITMQ_DETAILED
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    broker = next(job for job in scrape if job.get("metrics_path") == "/metrics/detailed")
    assert broker["params"]["family"] == ["queue_coarse_metrics"]


def test_the_name_check_sees_a_metric_the_service_does_not_export():
    assert "heimdall_training_jobs" in exported_names()
    assert "heimdall_training_job_duration_seconds_bucket" in exported_names()
    assert "heimdall_training_job_duration_seconds" not in exported_names()
    assert "heimdall_training_jobs_total" not in exported_names()


def test_compose_provisions_prometheus_and_grafana_from_deploy():
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        mounts = [v.split(":")[0] for v in services[name]["volumes"] if v.startswith("./")]
        assert mounts and all((DEPLOY / m).exists() for m in mounts), (name, mounts)
    assert any("alerts.yml" in v for v in services["prometheus"]["volumes"])
