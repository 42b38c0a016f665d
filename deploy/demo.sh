#!/usr/bin/env bash
# The main job on the embedded default: a synthetic NW-Italy dataset, then train, export,
# check and register. No servers: the object store is .heimdall/store, MLflow is SQLite.
#   bash deploy/demo.sh [train flags]     the job; flags go to `heimdall-training train`
#   bash deploy/demo.sh --ui [--port N]   the MLflow UI on the demo's runs (http://127.0.0.1:5000)
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
export HEIMDALL_STATE_DIR="${HEIMDALL_STATE_DIR:-$PWD/.heimdall}"
if [ "${1:-}" = "--ui" ]; then
  exec .venv/bin/mlflow ui --backend-store-uri "sqlite:///$HEIMDALL_STATE_DIR/mlflow.db" "${@:2}"
fi
data="$HEIMDALL_STATE_DIR/datasets"
if [ ! -f "$data/synth-nw-italy/v1/dataset.json" ]; then
  .venv/bin/heimdall-training synth --out "$data" --dataset_id synth-nw-italy --sessions 3000 --seed 0 >/dev/null
fi
.venv/bin/heimdall-training train --data_dir "$data/synth-nw-italy/v1" --run_name_prefix demo "$@"
case " $* " in
  *" --json "*) ;;
  *) echo "  or, the same:        bash deploy/demo.sh --ui" ;;
esac
