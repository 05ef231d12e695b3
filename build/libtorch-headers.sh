#!/usr/bin/env bash
# Makes LibTorch headers available at <dest>/include (a link) for the native build, from, in this order:
#   1. <home> (Maven property libtorch.home) or env LIBTORCH_HOME: a LibTorch folder, a torch package folder, or an
#      include folder itself;
#   2. <wheel> (Maven property torch.wheel) or env TORCH_WHEEL: a torch wheel file, unpacked under <dest>;
#   3. the torch <version> wheel fetched by `python3 -m pip download` (python on Windows), cached in
#      ~/.cache/power-attention: the wheel of this OS (for macOS on x86_64, which PyTorch no longer builds wheels
#      for, the macOS arm64 one: the headers are the same).
# Also writes <dest>/extra/c10/cuda/impl/cuda_cmake_macros.h, which the torch wheel lacks.
set -euo pipefail
dest="$1"; version="$2"; home="${3:-}"; wheel="${4:-}"
home="${home:-${LIBTORCH_HOME:-}}"
wheel="${wheel:-${TORCH_WHEEL:-}}"
mkdir -p "$dest"
python="$(command -v python3 || command -v python || true)"

fail() {
  cat >&2 <<MSG

power-attention: cannot find LibTorch $version headers ($1).
Set one of:
  -Dlibtorch.home=DIR   or  LIBTORCH_HOME=DIR     a LibTorch $version folder (with include/ATen/ATen.h)
                                                 or an installed torch $version package folder
  -Dtorch.wheel=FILE    or  TORCH_WHEEL=FILE      a torch-$version wheel (.whl)
or make \`python3 -m pip download --no-deps torch==$version\` work on this machine.

MSG
  exit 1
}

include=""
if [ -n "$home" ]; then
  for cand in "$home/include" "$home/torch/include" "$home"; do
    if [ -f "$cand/ATen/ATen.h" ]; then include="$(cd "$cand" && pwd)"; break; fi
  done
  [ -n "$include" ] || fail "no ATen/ATen.h under libtorch.home=$home"
else
  if [ -z "$wheel" ]; then
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/power-attention/torch-$version"
    wheel="$(ls "$cache"/torch-"$version"*.whl 2>/dev/null | head -n 1 || true)"
    if [ -z "$wheel" ]; then
      [ -n "$python" ] || fail "python3 not found to fetch the torch wheel"
      echo "power-attention: fetching the torch $version wheel for its headers (pip download)"
      mkdir -p "$cache"
      where=()
      if [ "$(uname -s)" = Darwin ] && [ "$(uname -m)" = x86_64 ]; then
        where=(--platform macosx_15_0_arm64 --python-version 3.12 --implementation cp --abi cp312)
      fi
      "$python" -m pip download --no-deps --retries 1 --timeout 30 --only-binary=:all: ${where[@]+"${where[@]}"} \
        "torch==$version" -d "$cache" >&2 \
        || fail "pip download torch==$version failed"
      wheel="$(ls "$cache"/torch-"$version"*.whl 2>/dev/null | head -n 1 || true)"
      [ -n "$wheel" ] || fail "pip download left no torch wheel in $cache"
    fi
  fi
  [ -f "$wheel" ] || fail "torch.wheel=$wheel is not a file"
  unpacked="$dest/wheel"
  stamp="$unpacked/.from"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wheel" ]; then
    rm -rf "$unpacked"
    mkdir -p "$unpacked"
    echo "power-attention: unpacking torch/include from $wheel"
    "${python:-python3}" - "$wheel" "$unpacked" <<'PY' || unzip -q -o "$wheel" 'torch/include/*' -d "$unpacked"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("torch/include/")])
PY
    echo "$wheel" > "$stamp"
  fi
  include="$(cd "$unpacked/torch/include" && pwd)"
  [ -f "$include/ATen/ATen.h" ] || fail "the wheel $wheel has no torch/include/ATen/ATen.h"
fi

vh="$include/torch/headeronly/version.h"
[ -f "$vh" ] || vh="$include/torch/csrc/api/include/torch/version.h"
part() { sed -n "s/^#define TORCH_VERSION_$1 \([0-9]*\).*/\1/p" "$vh" 2>/dev/null | head -n 1; }
found="$(part MAJOR).$(part MINOR).$(part PATCH)"
[ "$found" != ".." ] || found=""
if [ -n "$found" ] && [ "${found%%+*}" != "$version" ]; then
  echo "power-attention: WARNING: headers are LibTorch $found, the Bytedeco build is $version; versions must match" >&2
fi
# a link (where links cannot be made, as under Git's bash on Windows, ln copies: replace an older copy)
[ -L "$dest/include" ] || rm -rf "$dest/include"
ln -sfn "$include" "$dest/include"
mkdir -p "$dest/extra/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$dest/extra/c10/cuda/impl/cuda_cmake_macros.h"
echo "power-attention: LibTorch headers: $include (${found:-unknown version})"
