#!/usr/bin/env bash
# The native step before JavaCPP's own build: headers, then the core library with CMake.
#   native.sh <basedir> <build dir> <headers dir> <torch version> [<libtorch.home>] [<torch.wheel>]
#             [<platform extension>] [<cuda archs>]
# With the extension -gpu (Maven: -Djavacpp.platform.extension=-gpu) the core library gets the CUDA kernels
# (-DPOWER_ATTENTION_CUDA=ON) for <cuda archs> (CMake CUDA_ARCHITECTURES syntax, Maven property cuda.archs), and
# <build dir> gets a link to the toolkit's shared CUDA runtime (libcudart.so) for the JNI link.
# nvcc is taken from CUDACXX, else PATH, else /usr/local/cuda/bin/nvcc.
set -euo pipefail
base="$1"; build="$2"; headers="$3"; version="$4"; home="${5:-}"; wheel="${6:-}"; extension="${7:-}"; archs="${8:-}"
bash "$base/build/libtorch-headers.sh" "$headers" "$version" "$home" "$wheel"
command -v cmake >/dev/null || { echo "power-attention: cmake not found (apt-get install cmake)" >&2; exit 1; }

cuda_args=(-DPOWER_ATTENTION_CUDA=OFF)
if [[ "$extension" == *-gpu ]]; then
  nvcc="${CUDACXX:-$(command -v nvcc || true)}"
  [ -n "$nvcc" ] || nvcc=/usr/local/cuda/bin/nvcc
  [ -x "$nvcc" ] || { echo "power-attention: the $extension build needs nvcc (CUDA 13): set CUDACXX or PATH" >&2; exit 1; }
  # the toolkit's root as nvcc itself reports it (nvcc may be a wrapper script)
  cuda_root="$("$nvcc" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  [ -n "$cuda_root" ] || cuda_root="$(dirname "$(dirname "$(readlink -f "$nvcc")")")"
  cudart=""
  for dir in "$cuda_root/targets/x86_64-linux/lib" "$cuda_root/lib64" "$cuda_root/lib"; do
    if [ -e "$dir/libcudart.so" ]; then cudart="$dir/libcudart.so"; break; fi
  done
  [ -n "$cudart" ] || { echo "power-attention: no libcudart.so in the CUDA toolkit $cuda_root of $nvcc" >&2; exit 1; }
  cudart="$(cd "$(dirname "$cudart")" && pwd)/libcudart.so"
  cuda_args=(-DPOWER_ATTENTION_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc")
  [ -z "$archs" ] || cuda_args+=(-DPOWER_ATTENTION_CUDA_ARCHS="$archs")
  mkdir -p "$build"
  ln -sfn "$cudart" "$build/libcudart.so"
  echo "power-attention: CUDA kernels with $nvcc for ${archs:-the CMake default architectures}; runtime $cudart"
fi

cmake -S "$base/src/main/cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DLIBTORCH_INCLUDE="$headers/include" -DLIBTORCH_EXTRA_INCLUDE="$headers/extra" "${cuda_args[@]}" >/dev/null
cmake --build "$build" -j "$(nproc)"
