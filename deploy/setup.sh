#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: Python 3.11 with venv, then .venv with the
# pinned dependencies (pyproject.toml) and the test extra. Re-runs only when pyproject changes.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} with apt" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "setup: Python 3.11 is required (torch==2.13.0 wheels are pinned for it); found $(python3 --version)" >&2
  exit 1
}
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi
