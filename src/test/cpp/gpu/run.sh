#!/usr/bin/env bash
# The one command of the GPU machine (CUDA 13, CMake, ninja, PyTorch with its LibTorch; no Java, no network):
#   bash src/test/cpp/gpu/run.sh [test|bench|all|profile|build]   (from the repository root; default all)
# profile: PROFILE="chunk:t ..." (per-kernel times under ncu; chunk 0 is the quadratic form). build: the build only.
# BUILD_DIR, OUT and JOBS (parallel compile jobs, default all cores) set where and how.
# builds the harness with the library's sources, runs the correctness tests, then the benchmarks. Logs and JSON go
# to $OUT (or target/gpu-harness); the benchmark table is printed last.
set -euo pipefail
mode="${1:-all}"
root="$(cd "$(dirname "$0")/../../../.." && pwd)"
out="${OUT:-$root/target/gpu-harness}"
build="${BUILD_DIR:-$root/target/gpu-build}"
archs="${POWER_ATTENTION_CUDA_ARCHS:-90-real}"
mkdir -p "$out"
prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
t0=$(date +%s)
cmake -S "$root/src/test/cpp/gpu" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DPOWER_ATTENTION_CUDA_ARCHS="$archs" > "$out/cmake.log" 2>&1 \
  || { tail -40 "$out/cmake.log"; exit 1; }
cmake --build "$build" -j "${JOBS:-$(nproc)}" > "$out/build.log" 2>&1 || { grep -E "error" -A3 "$out/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
status=0
if [ "$mode" = test ] || [ "$mode" = all ]; then
  "$build/power_attention_gpu" test 2>&1 | tee "$out/test.log" || status=1
fi
if [ "$mode" = profile ]; then
  # PROFILE="chunk:t ..." (chunk 0: quadratic form); default the benchmark's longest case at chunk 256
  for run in ${PROFILE:-256:65536}; do
    chunk="${run%%:*}" t="${run##*:}"
    ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
      "$build/power_attention_gpu" profile "$chunk" "$t" > "$out/profile-$chunk-$t.csv" 2> "$out/profile-$chunk-$t.err" || status=1
    echo "== profile: chunk $chunk, t $t =="
    python3 "$root/src/test/cpp/gpu/profile_summary.py" "$out/profile-$chunk-$t.csv" | tee "$out/profile-$chunk-$t.txt"
  done
fi
if [ "$mode" = bench ] || [ "$mode" = all ]; then
  "$build/power_attention_gpu" decode 2>&1 | tee "$out/decode.log" || status=1
  "$build/power_attention_gpu" bench "$out/bench.json" 2>&1 | tee "$out/bench.log" || status=1
fi
exit $status
