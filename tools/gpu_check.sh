#!/usr/bin/env bash
# The prepared GPU check (issue 9), for a lent GPU machine through the device tool:
#
#   bash tools/gpu_wheels.sh                      # here, once: fetches .whl (git-ignored)
#   run(command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Builds dfzsl_fast._C against that machine's torch (CUDA on), runs the CUDA tests, the Triton
# tests on the GPU, the CUDA benchmarks and, with the time left, the rest of the suite; each
# phase has its own budget, the whole run stays under 8 minutes, and every result goes to ONE
# file, $OUT/gpu_check.json (./gpu_check_out without $OUT), with the logs in $OUT/logs/.
# See README.md "GPU check" and tools/gpu_check.py for the phases and the file's fields.
#
#   bash tools/gpu_check.sh --dry-run             # here, without a GPU (or DFZSL_GPU_CHECK_DRY=1)
#   bash tools/gpu_check.sh --phases build,bench  # a subset; --budget bench=150; --total-s 400
#
# The Python is $DFZSL_GPU_CHECK_PYTHON, else $PYTHON, else python3 (on the GPU machine the
# image's python3 holds torch, Triton, pytest and pytest-benchmark). Exit status 0 when every
# phase passed (and, on a GPU, the CUDA kernels registered); the JSON is written either way.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${DFZSL_GPU_CHECK_PYTHON:-${PYTHON:-python3}}"
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu_check: no Python at '$PY' (set DFZSL_GPU_CHECK_PYTHON)" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1
exec "$PY" tools/gpu_check.py "$@"
