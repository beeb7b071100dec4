#!/usr/bin/env bash
# Compile-check the CUDA sources with nvcc alone; no GPU is needed, and nothing is linked or kept.
#
#   tools/cuda_compile_check.sh            # sm_90 (override: CUDA_CHECK_ARCHS="80 90")
#   PYTHON=.venv/bin/python tools/cuda_compile_check.sh
#
# 1. Each csrc/cuda/*.cuh (torch-free kernels) goes through a one-line translation unit with
#    -DDFZSL_COMPILE_CHECK (which makes the headers instantiate every kernel variant), -std=c++17
#    and only csrc/include on the include path: proves the headers need nothing from torch.
# 2. Each csrc/cuda/*.cu (torch glue) is compiled with torch's headers and the flags that
#    setup.py / torch.utils.cpp_extension use (-std=c++20 for torch 2.14, the __CUDA_NO_HALF*
#    defines, --expt-relaxed-constexpr), to -c -o /dev/null.
# Uses $CUDA_HOME (else /usr/local/cuda); finds torch's include dirs with $PYTHON (else python).
# Exits 0 with a message when nvcc is absent, non-zero when any compile fails.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="$CUDA_HOME/bin/nvcc"
PYTHON="${PYTHON:-python}"
ARCHS="${CUDA_CHECK_ARCHS:-90}"

if [ ! -x "$NVCC" ]; then
  echo "cuda_compile_check: no nvcc at $NVCC (set CUDA_HOME); nothing checked"
  exit 0
fi
echo "cuda_compile_check: $("$NVCC" --version | tail -n 2 | head -n 1)"

GENCODE=()
for a in $ARCHS; do GENCODE+=("-gencode=arch=compute_${a},code=sm_${a}"); done
TORCH_NVCC_DEFS=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
                 -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
                 --expt-relaxed-constexpr)
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
fail=0
checked=0

shopt -s nullglob
for h in "$ROOT"/csrc/cuda/*.cuh; do
  rel="${h#"$ROOT"/}"
  tu="$TMP/$(basename "$h").check.cu"
  printf '#include "%s"\n' "$h" > "$tu"
  cmd=("$NVCC" -std=c++17 -O3 "${GENCODE[@]}" "${TORCH_NVCC_DEFS[@]}" -DDFZSL_COMPILE_CHECK
       -Werror all-warnings -I "$ROOT/csrc/include" -c "$tu" -o /dev/null)
  echo "+ ${cmd[*]}"
  if "${cmd[@]}"; then echo "ok   $rel (torch-free TU, sm_${ARCHS// /,sm_})"; else echo "FAIL $rel"; fail=1; fi
  checked=$((checked + 1))
done

cus=("$ROOT"/csrc/cuda/*.cu)
if [ ${#cus[@]} -gt 0 ]; then
  if ! INC="$(CUDA_HOME="$CUDA_HOME" "$PYTHON" - <<'EOF'
import glob, os, sys, sysconfig
from torch.utils import cpp_extension
dirs = cpp_extension.include_paths("cuda")
dirs.append(sysconfig.get_paths()["include"])
for sp in sys.path:  # nvidia-* wheel headers (cusparse.h, ...), as setup.py adds them
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "include")))
seen = []
for d in dirs:
    if os.path.isdir(d) and d not in seen:
        seen.append(d)
print("\n".join(seen))
EOF
  )"; then
    echo "FAIL cannot find torch's include dirs with PYTHON=$PYTHON"
    exit 1
  fi
  TV="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
  TCU="$("$PYTHON" -c 'import torch; print(torch.version.cuda or "")')"
  INCS=(-I "$ROOT/csrc/include")
  while IFS= read -r d; do [ -n "$d" ] && INCS+=(-isystem "$d"); done <<< "$INC"
  for f in "${cus[@]}"; do
    rel="${f#"$ROOT"/}"
    cmd=("$NVCC" -std=c++20 -O3 "${GENCODE[@]}" "${TORCH_NVCC_DEFS[@]}" -lineinfo
         -Xcompiler -fPIC -D_GLIBCXX_USE_CXX11_ABI=1 -DTORCH_EXTENSION_NAME=_C
         -DTORCH_API_INCLUDE_EXTENSION_H -DDFZSL_WITH_CUDA=1
         "-DDFZSL_TORCH_VERSION=\"$TV\"" "-DDFZSL_CUDA_VERSION=\"$TCU\""
         "${INCS[@]}" -c "$f" -o /dev/null)
    echo "+ ${cmd[*]}"
    if "${cmd[@]}"; then echo "ok   $rel (torch $TV headers, sm_${ARCHS// /,sm_})"; else echo "FAIL $rel"; fail=1; fi
    checked=$((checked + 1))
  done
fi

if [ "$checked" -eq 0 ]; then
  echo "cuda_compile_check: no csrc/cuda/*.cuh or *.cu found"
fi
if [ "$fail" -ne 0 ]; then
  echo "cuda_compile_check: FAILED"
  exit 1
fi
echo "cuda_compile_check: $checked file(s) compiled"
