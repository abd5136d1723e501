#!/usr/bin/env bash
# The GPU checks of issue 13 in one command; benchmarks/gpu_check.py says what each row is.
#   bash benchmarks/gpu_check.sh              # on a GPU machine: about 8 minutes on one GPU
#   bash benchmarks/gpu_check.sh --cpu-smoke  # no GPU (also automatic): same rows, tiny models
# PYTHON: the interpreter of lmlab's environment (default: python on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
