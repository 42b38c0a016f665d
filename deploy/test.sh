#!/usr/bin/env bash
# The test suite against real servers. The tests start SeaweedFS (S3) and `mlflow server`
# themselves; this script only makes sure the environment exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
exec .venv/bin/pytest "$@"
