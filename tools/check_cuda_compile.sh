#!/usr/bin/env bash
# Compile-check the CUDA sources (csrc/cuda) without a GPU or a CUDA build of torch.
#
#   tools/check_cuda_compile.sh            # kernels for sm_80 + sm_90, then the torch glue
#   ARCHS="90" tools/check_cuda_compile.sh  # other architectures
#   SKIP_GLUE=1 / SKIP_KERNELS=1 tools/check_cuda_compile.sh   # one half only
#
# What is checked:
#   1. every csrc/cuda/*.cu (the kernels: raw pointers, no torch headers) is compiled to
#      device code by nvcc for each architecture in ARCHS, with setup.py's nvcc flags;
#   2. every csrc/cuda/*.cpp (the torch glue) is parsed and type-checked with the host
#      compiler (-fsyntax-only) against torch's headers and the CUDA toolkit's. A CPU-only
#      torch lacks c10/cuda/impl/cuda_cmake_macros.h (generated at torch's build); a
#      one-line stand-in is supplied in a temporary include directory when it is missing.
# What is not: linking against a CUDA torch, and running anything (tests/test_cuda.py on a
# GPU; tests/test_cuda.py::test_cuda_kernels_emulated_on_cpu runs the kernels' logic on CPU).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCHS="${ARCHS:-80 90}"
NVCC="${NVCC:-$(command -v nvcc || true)}"
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
if [ -z "$NVCC" ]; then
  echo "check_cuda_compile: nvcc not found (set NVCC or put it on PATH)" >&2
  exit 2
fi
if [ -z "${CUDA_HOME:-}" ]; then
  # nvcc may be a wrapper outside the toolkit: ask it where its headers are.
  for cand in "$(dirname "$(readlink -f "$NVCC")")/.." /usr/local/cuda \
      "$("$NVCC" -v -x cu -E /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)"; do
    if [ -n "$cand" ] && [ -f "$cand/include/cuda_runtime.h" ]; then CUDA_HOME="$(cd "$cand" && pwd)"; break; fi
  done
fi
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
PYTHON="${PYTHON:-python}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

gencode=()
for a in $ARCHS; do gencode+=("-gencode" "arch=compute_${a},code=sm_${a}"); done

echo "check_cuda_compile: $("$NVCC" --version | tail -1), archs: $ARCHS"
status=0
pids=()
names=()
[ "${SKIP_KERNELS:-0}" = "1" ] && echo "  skip  kernels (SKIP_KERNELS=1)"
for src in "$ROOT"/csrc/cuda/*.cu; do
  [ "${SKIP_KERNELS:-0}" = "1" ] && break
  name="$(basename "$src")"
  # setup.py's nvcc flags plus those torch.utils.cpp_extension always adds (no implicit
  # half/bfloat16 conversions, relaxed constexpr), warnings as errors.
  "$NVCC" -O3 -std=c++20 --use_fast_math -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr \
    -Xcompiler -fPIC -Werror all-warnings "${gencode[@]}" -I"$ROOT/csrc" \
    -c "$src" -o "$TMP/${name}.o" >"$TMP/${name}.log" 2>&1 &
  pids+=("$!")
  names+=("$name")
done
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    echo "  ok    ${names[$i]} (nvcc, sm_${ARCHS// /, sm_})"
  else
    echo "  FAIL  ${names[$i]}"
    sed 's/^/        /' "$TMP/${names[$i]}.log"
    status=1
  fi
done

if [ "${SKIP_GLUE:-0}" = "1" ]; then
  echo "  skip  glue (SKIP_GLUE=1)"
  exit $status
fi
torch_inc="$("$PYTHON" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join(include_paths()))' 2>/dev/null || true)"
if [ -z "$torch_inc" ]; then
  echo "  skip  glue: torch is not importable with $PYTHON"
  exit $status
fi
incs=()
for d in $torch_inc; do incs+=("-I$d"); done
first_inc="${torch_inc%% *}"
if [ ! -f "$first_inc/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  mkdir -p "$TMP/shim/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$TMP/shim/c10/cuda/impl/cuda_cmake_macros.h"
  incs+=("-I$TMP/shim")
  shimmed=" (with a stand-in c10/cuda/impl/cuda_cmake_macros.h)"
fi
CXX="${CXX:-g++}"
for src in "$ROOT"/csrc/cuda/*.cpp; do
  name="$(basename "$src")"
  if "$CXX" -std=c++20 -fsyntax-only -Wall -DWITH_CUDA "${incs[@]}" -I"$CUDA_HOME/include" -I"$ROOT/csrc" \
      "$src" >"$TMP/${name}.log" 2>&1; then
    echo "  ok    ${name} ($CXX -fsyntax-only against torch $("$PYTHON" -c 'import torch; print(torch.__version__)')${shimmed:-})"
  else
    echo "  FAIL  ${name}"
    sed 's/^/        /' "$TMP/${name}.log" | head -60
    status=1
  fi
done
exit $status
