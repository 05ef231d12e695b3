#!/usr/bin/env bash
# The native step before JavaCPP's own build: headers, then the core library with CMake.
#   native.sh <basedir> <build dir> <headers dir> <torch version> [<libtorch.home>] [<torch.wheel>]
set -euo pipefail
base="$1"; build="$2"; headers="$3"; version="$4"; home="${5:-}"; wheel="${6:-}"
bash "$base/build/libtorch-headers.sh" "$headers" "$version" "$home" "$wheel"
command -v cmake >/dev/null || { echo "power-attention: cmake not found (apt-get install cmake)" >&2; exit 1; }
cmake -S "$base/src/main/cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DLIBTORCH_INCLUDE="$headers/include" -DLIBTORCH_EXTRA_INCLUDE="$headers/extra" >/dev/null
cmake --build "$build" -j "$(nproc)"
