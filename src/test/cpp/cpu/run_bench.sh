#!/usr/bin/env bash
# The CPU benchmark table: power_full (this build, and optionally a baseline build of bench.cpp) against LibTorch's
# causal SDPA, interleaved call by call so that a shared machine's load falls on both alike.
#   run_bench.sh [rounds] [baseline bench binary]     (after build.sh bench)
# OpenBLAS at one thread (LibTorch's SDPA calls it inside its own parallel loops) and passive OpenMP waiting (CPU
# time then counts work, not spinning). One line per call set; see bench.cpp for the columns.
set -uo pipefail
root="$(cd "$(dirname "$0")/../../../.." && pwd)"
bench="$root/target/cpu-bench/bench"
rounds="${1:-2}"
base="${2:-}"
export OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive
for r in $(seq "$rounds"); do
  echo "# round $r"
  for t in 1024 2048 4096; do
    reps=$([ "$t" -ge 4096 ] && echo 3 || echo 5)
    "$bench" sdpa "$t" 0 "$reps"
    "$bench" power "$t" 0 "$reps"
    for c in 128 256 512; do "$bench" power "$t" "$c" "$reps"; done
    [ -n "$base" ] && "$base" power "$t" 128 "$reps"
  done
  "$bench" sdpa 16384 0 1
  for c in 128 256; do "$bench" power 16384 "$c" 1; done
  [ -n "$base" ] && "$base" power 16384 128 1
  for t in 4096 16384; do
    "$bench" sdpa-fwd "$t" 0 3
    "$bench" power-fwd "$t" 256 3
  done
  "$bench" decode 1 0 20
done
