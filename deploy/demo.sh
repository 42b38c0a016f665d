#!/usr/bin/env bash
# The main job on the embedded default: a synthetic NW-Italy dataset, then train, export,
# check and register. No servers: the object store is .heimdall/store, MLflow is SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
export HEIMDALL_STATE_DIR="${HEIMDALL_STATE_DIR:-$PWD/.heimdall}"
data="$HEIMDALL_STATE_DIR/datasets"
if [ ! -f "$data/synth-nw-italy/v1/dataset.json" ]; then
  .venv/bin/heimdall-training synth --out "$data" --dataset_id synth-nw-italy --sessions 3000 --seed 0
fi
exec .venv/bin/heimdall-training train --data_dir "$data/synth-nw-italy/v1" --run_name_prefix demo "$@"
