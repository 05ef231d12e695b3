#!/usr/bin/env bash
# The native step before JavaCPP's own build: headers, then the core library with CMake.
#   native.sh <basedir> <build dir> <headers dir> <torch version> [<libtorch.home>] [<torch.wheel>]
#             [<platform extension>] [<cuda archs>] [<LibTorch natives JAR>]
# With the extension -gpu (Maven: -Djavacpp.platform.extension=-gpu) the core library gets the CUDA kernels
# (-DPOWER_ATTENTION_CUDA=ON) for <cuda archs> (CMake CUDA_ARCHITECTURES syntax, Maven property cuda.archs), and
# <build dir> gets the toolkit's CUDA runtime to link against (libcudart.so; cudart.lib on Windows).
# nvcc is taken from CUDACXX, else PATH, else /usr/local/cuda/bin/nvcc.
# Runs on Linux, macOS and Windows (Git's bash, MSVC's tools on PATH, e.g. from vcvars64.bat): on Windows it also
# makes import libraries (c10.lib, torch_cpu.lib, ...) for the DLLs of <LibTorch natives JAR>, which ships none.
# CMake's generator is CMake's default or the CMAKE_GENERATOR environment variable (e.g. Ninja).
set -euo pipefail
base="$1"; build="$2"; headers="$3"; version="$4"; home="${5:-}"; wheel="${6:-}"; extension="${7:-}"; archs="${8:-}"
natives_jar="${9:-}"
case "$(uname -s)" in
  MINGW*|MSYS*|CYGWIN*) windows=1 ;;
  *) windows=0 ;;
esac
if [ "$windows" = 1 ]; then
  # Maven passes Windows paths (D:\a\...): D:/a/... reads the same to bash and to the native tools
  base="$(cygpath -m "$base")"; build="$(cygpath -m "$build")"; headers="$(cygpath -m "$headers")"
  [ -z "$home" ] || home="$(cygpath -m "$home")"
  [ -z "$wheel" ] || wheel="$(cygpath -m "$wheel")"
  [ -z "$natives_jar" ] || natives_jar="$(cygpath -m "$natives_jar")"
fi
bash "$base/build/libtorch-headers.sh" "$headers" "$version" "$home" "$wheel"
command -v cmake >/dev/null || { echo "power-attention: cmake not found (apt-get install cmake)" >&2; exit 1; }
mkdir -p "$build"
if [ "$windows" = 1 ]; then
  bash "$base/build/windows-import-libs.sh" "$natives_jar" "$build"
fi

cuda_args=(-DPOWER_ATTENTION_CUDA=OFF)
if [[ "$extension" == *-gpu ]]; then
  nvcc="${CUDACXX:-$(command -v nvcc || true)}"
  [ -n "$nvcc" ] || nvcc=/usr/local/cuda/bin/nvcc
  [ -x "$nvcc" ] || { echo "power-attention: the $extension build needs nvcc (CUDA 13): set CUDACXX or PATH" >&2; exit 1; }
  # the toolkit's root as nvcc itself reports it (nvcc may be a wrapper script)
  cuda_root="$("$nvcc" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  [ -n "$cuda_root" ] || cuda_root="$(dirname "$(dirname "$(readlink -f "$nvcc")")")"
  [ -n "$cuda_root" ] || cuda_root="${CUDA_PATH:-}"
  cudart_name=libcudart.so
  [ "$windows" = 0 ] || cudart_name=cudart.lib
  cudart=""
  for dir in "$cuda_root/targets/x86_64-linux/lib" "$cuda_root/lib64" "$cuda_root/lib/x64" "$cuda_root/lib"; do
    if [ -e "$dir/$cudart_name" ]; then cudart="$dir/$cudart_name"; break; fi
  done
  [ -n "$cudart" ] || { echo "power-attention: no $cudart_name in the CUDA toolkit $cuda_root of $nvcc" >&2; exit 1; }
  cudart="$(cd "$(dirname "$cudart")" && pwd)/$cudart_name"
  cuda_args=(-DPOWER_ATTENTION_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc")
  [ -z "$archs" ] || cuda_args+=(-DPOWER_ATTENTION_CUDA_ARCHS="$archs")
  if [ "$windows" = 1 ]; then cp -f "$cudart" "$build/$cudart_name"; else ln -sfn "$cudart" "$build/$cudart_name"; fi
  echo "power-attention: CUDA kernels with $nvcc for ${archs:-the CMake default architectures}; runtime $cudart"
fi

cmake -S "$base/src/main/cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DLIBTORCH_INCLUDE="$headers/include" -DLIBTORCH_EXTRA_INCLUDE="$headers/extra" "${cuda_args[@]}" >/dev/null
cmake --build "$build" --config Release -j "$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
