#!/usr/bin/env bash
# The GPU check of issue 22, on a fresh machine with an NVIDIA GPU (driver >= 570) and network:
# the pinned environment (deploy/setup.sh), torch==2.13.0 again from the CUDA wheel index the
# Dockerfile uses, then tests/bench/gpu_check.py: the learned radio map fitted on the CPU, on one GPU
# and with DDP on two when there are two, over 100,000 synthetic sessions on a 300 × 300 km
# deployment. Writes reports/gpu.md. Arguments go to the check (e.g. --sessions 20000 for a short run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
.venv/bin/pip uninstall -q -y torch  # setup's is the CPU wheel; the CUDA one brings its nvidia-* libraries
.venv/bin/pip install -q --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}" \
  "$(grep -o 'torch==[0-9.]*' pyproject.toml | head -1)"
.venv/bin/python -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print(torch.__version__, torch.cuda.get_device_name(0))'
.venv/bin/python -m tests.bench.gpu_check "$@"
