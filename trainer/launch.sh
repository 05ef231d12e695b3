#!/usr/bin/env bash
# Starts N local trainer processes the torchrun way (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and
# waits for them; if one fails, the others are stopped and the script exits with its code.
#
#   trainer/launch.sh 2 train --max_iters=200 --batch_size=4
#
# Environment: MASTER_ADDR (default 127.0.0.1), MASTER_PORT (default 29500), TRAINER_JAR (default: the shaded JAR
# next to this script), JAVA (default java), JAVA_OPTS. For many machines, run one launcher per machine with
# NODE_RANK=i and NNODES=n (each machine starts N processes; ranks are NODE_RANK * N + local rank).
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 NPROC train|sample [--flags ...]" >&2
  exit 2
fi
nproc_per_node="$1"; shift
if ! [[ "$nproc_per_node" =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: NPROC must be a positive integer, got '$nproc_per_node'" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
jar="${TRAINER_JAR:-$here/target/power-attention-trainer.jar}"
if [ ! -f "$jar" ]; then
  echo "$0: $jar not found; build it with: mvn -q -f trainer package -DskipTests" >&2
  exit 2
fi
nnodes="${NNODES:-1}"
node_rank="${NODE_RANK:-0}"
export MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
export MASTER_PORT="${MASTER_PORT:-29500}"
export WORLD_SIZE=$((nproc_per_node * nnodes))
# Share the cores: each process gets its part of this machine's cores for LibTorch's intra-op threads.
cores="$(nproc)"
threads=$(( cores / nproc_per_node )); [ "$threads" -ge 1 ] || threads=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < nproc_per_node; i++)); do
  RANK=$((node_rank * nproc_per_node + i)) LOCAL_RANK=$i \
    ${JAVA:-java} ${JAVA_OPTS:-} -jar "$jar" "$@" &
  pids+=("$!")
done
status=0
for ((n = 0; n < nproc_per_node; n++)); do
  set +e
  wait -n
  code=$?
  set -e
  if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$code
    echo "$0: a trainer process exited with code $code; stopping the others" >&2
    cleanup
  fi
done
exit "$status"
