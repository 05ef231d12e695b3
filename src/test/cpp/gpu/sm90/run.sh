#!/usr/bin/env bash
# Builds and runs query_check.cu (the sm_90a query kernel outside the library: nvcc with LibTorch's headers, no
# LibTorch calls; a minute):
#   bash src/test/cpp/gpu/sm90/run.sh [check|time|all|build]   (from the repository root; default all; build: the
#   binary only)
# QUERY_CHECK=path: run that binary instead of building one (built elsewhere with the same command); TORCH_INCLUDE:
# LibTorch's include folder (default: the Python torch package's).
set -euo pipefail
root="$(cd "$(dirname "$0")/../../../../.." && pwd)"
bin="${QUERY_CHECK:-}"
if [ -z "$bin" ]; then
  bin="${BUILD_DIR:-$root/target/sm90-check}/query_check"
  mkdir -p "$(dirname "$bin")"
  inc="${TORCH_INCLUDE:-$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')}"
  # LibTorch's headers under nvcc: its own flags (no half operator overloads from cuda_fp16.h), as the library's
  # CMakeLists.txt sets them
  nvcc -std=c++20 -O3 --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -Xcudafe --diag_suppress=20012 \
    -I"$root/src/main/cpp" -I"$inc" -I"$inc/torch/csrc/api/include" ${TORCH_EXTRA_INCLUDE:+-I"$TORCH_EXTRA_INCLUDE"} \
    -gencode=arch=compute_90a,code=sm_90a \
    "$root/src/test/cpp/gpu/sm90/query_check.cu" "$root/src/main/cpp/cuda/sympow2/query_sm90.cu" \
    "$root/src/main/cpp/cuda/common/sm90_select.cu" -o "$bin"
fi
[ "${1:-all}" = build ] || "$bin" "${1:-all}"
