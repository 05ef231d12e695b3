#!/usr/bin/env bash
# The GPU benchmark before and after a change, on one card in one run:
#   bash src/test/cpp/gpu/ab.sh <before tree> [rounds]     (from the repository root of the "after" tree)
# <before tree>: another checkout's root (its src/main/cpp and src/test/cpp/gpu suffice). Builds both trees at once
# (half the cores each), runs the correctness cases on both (at once), then the benchmark table alternately (before, after,
# before, after, ... `rounds` times each, default 2) so that drift shows, and prints the tables last. Logs, JSON and
# the build times go to $OUT (or target/gpu-ab).
set -uo pipefail
before="$(cd "$1" && pwd)"
rounds="${2:-2}"
root="$(cd "$(dirname "$0")/../../../.." && pwd)"
out="${OUT:-$root/target/gpu-ab}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv > "$out/gpu.txt"
jobs=$(( $(nproc) / 2 ))
prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
archs="${POWER_ATTENTION_CUDA_ARCHS:-90a-real}"
TIMEFORMAT='%R s wall, %U s user'
build() {  # build <tree> <name>: the harness of <tree> in /tmp/gpu-ab-<name>, the build's time last in its log
  local dir="/tmp/gpu-ab-$2" log="$out/$2-build.txt"
  cmake -S "$1/src/test/cpp/gpu" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DPOWER_ATTENTION_CUDA_ARCHS="$archs" > "$log" 2>&1 || return 1
  { time cmake --build "$dir" -j "$jobs" >> "$log" 2>&1; } 2>> "$log"
}
build "$before" before & b=$!
build "$root" after & a=$!
wait $b; wait $a
for t in before after; do echo "$t build: $(tail -1 "$out/$t-build.txt")"; done | tee "$out/builds.txt"
status=0
for t in after before; do  # at once (the oracle's CPU work dominates)
  /tmp/gpu-ab-$t/power_attention_gpu test > "$out/$t-test.log" 2>&1 &
done
wait -n || status=1
wait -n || status=1
for t in after before; do echo "$t test: $(tail -1 "$out/$t-test.log")"; done
for r in $(seq "$rounds"); do
  for t in before after; do
    /tmp/gpu-ab-$t/power_attention_gpu bench "$out/$t-bench-$r.json" > "$out/$t-bench-$r.log" 2>&1 || status=1
  done
done
for r in $(seq "$rounds"); do
  for t in before after; do echo "== $t, round $r"; grep -v "^==" "$out/$t-bench-$r.log" | grep -E "^(impl|sdpa|power)"; done
done
exit $status
