#!/usr/bin/env bash
# Builds a native CPU tool against the core library of a Maven build and Bytedeco's LibTorch from the JavaCPP cache
# (run `mvn install -DskipTests` once first): build.sh [bench | check | checkpoint_check | products] -> target/cpu-bench/<name>.
#   bench             the CPU benchmark (run_bench.sh runs it)
#   check             the CPU path against the references, states in pieces, decode steps (exit status 0: all pass)
#   checkpoint_check  state checkpointing: every interval gives the same result to the bit
#   products          the chunked form's state products alone (phi_products_cpu.h), one thread, GFLOP/s
set -euo pipefail
root="$(cd "$(dirname "$0")/../../../.." && pwd)"
lib="${JAVACPP_CACHE:-$HOME/.javacpp/cache}/pytorch-2.13.0-1.5.14-linux-x86_64.jar/org/bytedeco/pytorch/linux-x86_64"
blas="${JAVACPP_CACHE:-$HOME/.javacpp/cache}/openblas-0.3.31-1.5.13-linux-x86_64.jar/org/bytedeco/openblas/linux-x86_64"
inc="$root/target/libtorch-headers/include"
# OpenBLAS as the cache holds it: libopenblas_nolapack.so where present, else the libopenblas.so.0 LibTorch loads
openblas=-lopenblas_nolapack
[ -e "$blas/libopenblas_nolapack.so" ] || openblas=-l:libopenblas.so.0
cmake --build "$root/target/native/linux-x86_64" -j2 >/dev/null
mkdir -p "$root/target/cpu-bench"
src="${1:-bench}"
g++ -std=c++20 -O2 -g -o "$root/target/cpu-bench/$src" "$root/src/test/cpp/cpu/$src.cpp" \
  -I"$root/src/main/cpp" -I"$inc" -I"$inc/torch/csrc/api/include" -I"$root/target/libtorch-headers/extra" \
  "$root/target/native/linux-x86_64/libpower_attention_core.a" \
  -L"$lib" -L"$blas" -Wl,-rpath,"$lib:$blas" -Wl,--no-as-needed -ltorch_cpu -lc10 "$openblas" -Wl,--as-needed -ldl -lpthread
echo "$root/target/cpu-bench/$src"
