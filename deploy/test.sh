#!/usr/bin/env bash
# The test suite against real servers. RabbitMQ and PostgreSQL are system services: this script
# installs and starts them when missing (deploy/services.sh). The tests start SeaweedFS (S3) and
# `mlflow server` themselves, on free ports, and stop them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
bash deploy/services.sh
exec .venv/bin/pytest "$@"
