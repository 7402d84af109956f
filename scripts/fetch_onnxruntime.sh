#!/usr/bin/env bash
# Puts ONNX Runtime's shared library (which the router loads at run time, `ort` load-dynamic)
# at vendor/onnxruntime/libonnxruntime.so, taken from the `onnxruntime` wheel on PyPI.
# Safe to run again; does nothing when the library is already there.
# ONNXRUNTIME_ARCH=aarch64 fetches the aarch64 wheel's library into vendor/onnxruntime-aarch64/
# instead (for cross builds: scripts/build-board.sh pi5).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${ONNXRUNTIME_VERSION:-1.31.1}"
ARCH="${ONNXRUNTIME_ARCH:-}"
DEST="vendor/onnxruntime${ARCH:+-$ARCH}"
platform=()
[ -n "$ARCH" ] && platform=(--platform "manylinux_2_28_$ARCH" --platform "manylinux2014_$ARCH" --platform "manylinux_2_27_$ARCH")
if [ -e "$DEST/libonnxruntime.so" ] && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
PY="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "setup: fetching libonnxruntime $VERSION${ARCH:+ ($ARCH)} from the onnxruntime wheel on PyPI" >&2
"$PY" -m pip download -q --no-deps --only-binary :all: "${platform[@]}" --dest "$tmp" "onnxruntime==$VERSION"
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
