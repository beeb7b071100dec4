#!/usr/bin/env bash
# Download into ./.whl the wheels that tools/gpu_check.sh installs on the offline GPU machine
# (Python 3.12, x86-64) where its image lacks them. The same `pip download` as
# ../shared/tools/gpu-wheels.sh (open_clip and its two small needs), plus, pinned to the versions
# this project is tested with, the test dependencies: the image has these today, so they are a
# fallback that tools/gpu_check.sh installs only for a distribution the image does not have.
#
#   bash tools/gpu_wheels.sh [EXTRA==VERSION ...]
#   then: run tool with carry [".whl"], command `bash tools/gpu_check.sh` (README "GPU check")
#
# .whl is git-ignored; it travels only through `carry` (64 MiB with the working tree: about 3 MiB).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
git check-ignore -q .whl 2>/dev/null || echo "gpu_wheels: warning: .whl is not git-ignored here" >&2
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
pkgs=(
  # not in the GPU image (ecosystem.md: open_clip 3.x; its needs the image lacks)
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
  # in the image today; carried in case a later image drops them
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pytest-benchmark==5.3.1 py-cpuinfo==9.0.0
  hypothesis==6.170.27 sortedcontainers==2.4.0 mpmath==1.3.0 safetensors==0.8.0
  "$@"
)
for pkg in "${pkgs[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d .whl "$pkg"
done
ls -la .whl
du -sh .whl
