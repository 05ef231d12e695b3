#!/usr/bin/env bash
# Windows only (Git's bash, MSVC's dumpbin and lib on PATH): import libraries for the LibTorch DLLs of a Bytedeco
# natives JAR, which ships DLLs without .lib files, so that MSVC can link our JNI library against them.
#   windows-import-libs.sh <pytorch natives JAR> <output dir>
# For each DLL (but JavaCPP's own jni*.dll): its exports (dumpbin -exports) as a module-definition file, then
# lib -def makes <name>.lib for <name>.dll. Made from the very DLLs that load at run time, they cannot disagree
# with them (the import libraries of a torch wheel of the same version could, if the builds' options differ).
set -euo pipefail
jar="$1"; out="$2"
[ -f "$jar" ] || { echo "power-attention: no LibTorch natives JAR at $jar (needed for its import libraries)" >&2; exit 1; }
for tool in dumpbin lib; do
  command -v "$tool" >/dev/null || { echo "power-attention: $tool not found: run the build from a Visual Studio developer prompt (vcvars64.bat)" >&2; exit 1; }
done
py="$(command -v python3 || command -v python || true)"
[ -n "$py" ] || { echo "power-attention: python not found (to unpack $jar)" >&2; exit 1; }
work="$out/import-libs"
mkdir -p "$work"
stamp="$work/.from"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$jar" ]; then exit 0; fi
"$py" - "$jar" "$work" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        base = os.path.basename(n)
        if base.endswith(".dll") and not base.startswith("jni"):
            with open(os.path.join(sys.argv[2], base), "wb") as f:
                f.write(z.read(n))
PY
for dll in "$work"/*.dll; do
  name="$(basename "$dll" .dll)"
  # dumpbin's table: "ordinal hint RVA name", then one line per export (no RVA for a forwarded one)
  dumpbin -nologo -exports "$(cygpath -w "$dll")" | awk -v lib="$name" '
    BEGIN { print "LIBRARY " lib ".dll"; print "EXPORTS" }
    /^ +ordinal +hint +RVA +name/ { table = 1; next }
    table && /^ *Summary/ { table = 0 }
    table && $1 ~ /^[0-9]+$/ && $2 ~ /^[0-9A-Fa-f]+$/ { print "  " ($3 ~ /^[0-9A-Fa-f]{8}$/ ? $4 : $3) }
  ' > "$work/$name.def"
  lib -nologo -machine:x64 -def:"$(cygpath -w "$work/$name.def")" -out:"$(cygpath -w "$out/$name.lib")" >/dev/null
  echo "power-attention: import library $name.lib ($(($(wc -l < "$work/$name.def") - 2)) exports)"
done
rm -f "$work"/*.dll
echo "$jar" > "$stamp"
