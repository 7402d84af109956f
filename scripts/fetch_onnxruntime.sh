#!/usr/bin/env bash
# Puts ONNX Runtime's shared library (which the router loads at run time, `ort` load-dynamic)
# at vendor/onnxruntime/libonnxruntime.so, taken from the `onnxruntime` wheel on PyPI.
# Safe to run again; does nothing when the library is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${ONNXRUNTIME_VERSION:-1.31.1}"
DEST="vendor/onnxruntime"
if [ -e "$DEST/libonnxruntime.so" ] && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
PY="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "setup: fetching libonnxruntime $VERSION from the onnxruntime wheel on PyPI" >&2
"$PY" -m pip download -q --no-deps --only-binary :all: --dest "$tmp" "onnxruntime==$VERSION"
wheel="$(ls "$tmp"/onnxruntime-*.whl)"
"$PY" - "$wheel" "$tmp/lib" <<'PYEOF'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if os.path.basename(n).startswith("libonnxruntime.so")]
    if not names:
        sys.exit(f"no libonnxruntime.so in {wheel}")
    for n in names:
        with z.open(n) as src, open(os.path.join(out, os.path.basename(n)), "wb") as dst:
            dst.write(src.read())
PYEOF
mkdir -p "$DEST"
lib="$(ls "$tmp"/lib/libonnxruntime.so* | sort | tail -1)"
install -m 0644 "$lib" "$DEST/libonnxruntime.so.$VERSION"
ln -sf "libonnxruntime.so.$VERSION" "$DEST/libonnxruntime.so"
echo "$VERSION" > "$DEST/VERSION"
echo "setup: $DEST/libonnxruntime.so -> libonnxruntime.so.$VERSION" >&2
