#!/usr/bin/env bash
# The one command of the GPU machine (CUDA 13, CMake, ninja, PyTorch with its LibTorch; no Java, no network):
#   bash src/test/cpp/gpu/run.sh [test|bench|all|profile|scans|build]   (from the repository root; default all)
# profile: PROFILE="chunk:t ..." (per-kernel times under ncu; chunk 0 is the quadratic form). scans: the fused scans
# alone at the long shapes, each kernel and CTA shape checked against the sm_80 one, then timed. build: the build only.
# BUILD_DIR, OUT and JOBS (parallel compile jobs, default all cores) set where and how; POWER_ATTENTION_CUDA_ARCHS
# the architectures (default 90a-real: the Hopper kernels with the sm_80 ones); SM90_CHECK=1 also builds (beside
# the harness) and runs the standalone sm_90a query check and its variants' times (sm90/run.sh).
# Builds the harness with the library's sources once, runs the correctness tests (on Hopper: every case on the
# default kernels, then the cases that reach an sm_90a kernel again on each other kernel set, same inputs), then
# the benchmarks (every kernel set, a kernel set whose test pass threw is left out). Logs and JSON go to $OUT (or
# target/gpu-harness); the tests' pass lines and the benchmark's summary table are printed last.
set -euo pipefail
mode="${1:-all}"
root="$(cd "$(dirname "$0")/../../../.." && pwd)"
out="${OUT:-$root/target/gpu-harness}"
build="${BUILD_DIR:-$root/target/gpu-build}"
archs="${POWER_ATTENTION_CUDA_ARCHS:-90a-real}"
mkdir -p "$out"
prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
t0=$(date +%s)
if [ "${SM90_CHECK:-0}" = 1 ]; then  # its own nvcc build, beside the harness's
  mkdir -p "$build/sm90-check"
  BUILD_DIR="$build/sm90-check" bash "$root/src/test/cpp/gpu/sm90/run.sh" build > "$out/sm90-check.log" 2>&1 &
  sm90_build=$!
fi
cmake -S "$root/src/test/cpp/gpu" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DPOWER_ATTENTION_CUDA_ARCHS="$archs" > "$out/cmake.log" 2>&1 \
  || { tail -40 "$out/cmake.log"; exit 1; }
cmake --build "$build" -j "${JOBS:-$(nproc)}" > "$out/build.log" 2>&1 || { grep -E "error" -A3 "$out/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s" | tee -a "$out/build.log"
[ "$mode" = build ] && exit 0
status=0
if [ "$mode" = test ] || [ "$mode" = all ]; then
  t1=$(date +%s)
  "$build/power_attention_gpu" test > "$out/test.log" 2>&1 || status=1
  "$build/power_attention_gpu" streams 3 > "$out/streams.log" 2>&1 || status=1
  echo "test: $(( $(date +%s) - t1 )) s, rc $status" | tee -a "$out/test.log"
fi
if [ "${SM90_CHECK:-0}" = 1 ]; then
  if wait "$sm90_build"; then
    QUERY_CHECK="$build/sm90-check/query_check" bash "$root/src/test/cpp/gpu/sm90/run.sh" all >> "$out/sm90-check.log" 2>&1 \
      || status=1
  else
    status=1
  fi
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
if [ "$mode" = scans ]; then
  "$build/power_attention_gpu" scans > "$out/scans.log" 2>&1 || status=1
  grep -E "^(FAIL|== scans)|scan-time|fwdbwd-time" "$out/scans.log" || true
fi
if [ "$mode" = bench ] || [ "$mode" = all ]; then
  # the kernel sets after the default: those whose test pass threw nothing (a CUDA error there would take every
  # later measurement of the process with it)
  if [ -s "$out/test.log" ] && [ -z "${POWER_ATTENTION_HARNESS_SETS+x}" ]; then
    default_set="$(sed -n 's/^== kernel sets: \([^ ]*\) (the default here).*/\1/p' "$out/test.log")"
    sets=""
    while read -r set threw; do
      [ "$set" = "$default_set" ] && continue
      if [ "$threw" = 0 ]; then sets="${sets:+$sets,}$set"; else echo "bench: $set left out ($threw threw in its test pass)"; fi
    done < <(sed -n 's/^pass \([^:]*\): .* \([0-9]*\) threw$/\1 \2/p' "$out/test.log")
    [ -z "$default_set" ] || export POWER_ATTENTION_HARNESS_SETS="$sets"
  fi
  t1=$(date +%s)
  "$build/power_attention_gpu" decode > "$out/decode.log" 2>&1 || status=1
  "$build/power_attention_gpu" bench "$out/bench.json" > "$out/bench.log" 2>&1 || status=1
  echo "decode + bench: $(( $(date +%s) - t1 )) s" | tee -a "$out/bench.log"
fi
# last: what the tests say, then the benchmark's summary table
if [ -s "$out/sm90-check.log" ]; then
  echo "== standalone sm_90a query check =="
  grep -E "FAIL|worst|failures|rror" "$out/sm90-check.log" | head -20 || true
  sed -n '/^shape /,$p' "$out/sm90-check.log"
fi
if [ -s "$out/test.log" ]; then
  echo "== tests =="
  grep -E "^(FAIL|== kernel sets|pass |== [0-9]+ failure)" "$out/test.log" | head -60 || true
  [ -s "$out/streams.log" ] && echo "streams: $(grep -c '^ok' "$out/streams.log") bitwise equal, $(grep -c '^FAIL' "$out/streams.log") not" || true
fi
if [ -s "$out/decode.log" ]; then echo; cat "$out/decode.log"; fi
if [ -s "$out/bench.log" ]; then sed -n '/^== summary/,$p' "$out/bench.log"; fi
exit $status
