#!/usr/bin/env bash
# On the GPU machine, after ../shared/gpu-java's device_setup.sh (which writes STORE/env.sh): the Java GPU suite,
# JUnit 5 classes tagged `gpu`, each group in a JVM of its own (a native failure in one cannot take the others):
#   core     CudaOpTest (the op on CUDA vs the CPU op in fp64), CudaLoadingTest (a fresh JavaCPP cache sees the GPU),
#            CudaReliabilityTest (hostile inputs on CUDA vs the log-space oracle, the allocator flat)
#   trainer  CudaTrainerTest (bf16 training, resume, sampling on CUDA)
#   nccl     CudaDistributedTest (NCCL group of one; two GPUs where the machine has them)
#   bash run-suite.sh [core|trainer|nccl ...]     (default: all three; logs in $OUT, else /tmp/gpu-suite)
# The folder holding this script holds the JARs of pack-suite.sh. SUITE_TIMEOUT bounds each JVM (default 300 s).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log=${OUT:-/tmp/gpu-suite}
mkdir -p "$log"
# shellcheck disable=SC1091
source "${JGPU_STORE:-/root/jgpu}/env.sh"
export GPU_SUITE_CP="$here/power-attention.jar:$here/power-attention-trainer.jar:$here/power-attention-tests.jar:$here/power-attention-trainer-tests.jar:$here/junit-console.jar:$here/lib/*:$JGPU_CP"
groups=${*:-core trainer nccl}
status=0
for g in $groups; do
  case $g in
    core) sel=(--select-class io.github.powerattention.CudaOpTest --select-class io.github.powerattention.CudaLoadingTest
          --select-class io.github.powerattention.CudaReliabilityTest
          --select-class io.github.powerattention.CudaSecondDerivativeTest) ;;
    trainer) sel=(--select-class io.github.powerattention.trainer.CudaTrainerTest) ;;
    nccl) sel=(--select-class io.github.powerattention.trainer.CudaDistributedTest) ;;
    *) echo "run-suite: unknown group $g (core, trainer, nccl)"; exit 2 ;;
  esac
  s=$(date +%s)
  # shellcheck disable=SC2086
  timeout "${SUITE_TIMEOUT:-300}" java $JGPU_OPTS -Xmx16g -cp "$GPU_SUITE_CP" org.junit.platform.console.ConsoleLauncher \
    execute --disable-banner --disable-ansi-colors --details=tree --details-theme=ascii "${sel[@]}" \
    > "$log/suite-$g.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || status=1
  echo "== gpu suite $g: exit $rc, $(( $(date +%s) - s )) s"
  grep -E '\[X\]|\[A\]|\[S\]|tests (successful|failed|aborted|skipped)|containers failed' "$log/suite-$g.log" | head -40
  grep -E '=> |Failures \(|MethodSource' "$log/suite-$g.log" | grep -v '^\s*$' | head -20
done
exit $status
