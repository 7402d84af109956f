#!/usr/bin/env bash
# Build llama.cpp's own llama-server and llama-bench as the reference that scripts/bench_serving.py
# compares Outpost against. Nothing of llama.cpp goes into this repository: the sources come from
# the llama-cpp-python 0.3.36 sdist on PyPI (its vendor/llama.cpp carries the full tree, tools/
# included) and are built OUTSIDE the repo.
#
#   scripts/build_llama_reference.sh [DEST]      # DEST defaults to <repo>/../refs/llama.cpp
#
# Afterwards: DEST/build/bin/llama-server and DEST/build/bin/llama-bench. Idempotent: an existing
# DEST is reused and cmake rebuilds only what changed. JOBS=N overrides the default -j1 (the dev
# machines have 2 cores shared by several builds; -j1 under nice keeps the build polite).
#
# Build choices (keep them in step with how Outpost builds ggml, see .cargo/config.toml):
# - GGML_NATIVE=ON: every CPU feature of the build machine, like `target-cpu=native`.
# - x86-64: -mno-amx-tile -mno-amx-int8 -mno-amx-bf16, as for Outpost (ggml's AMX kernels crash or
#   run slower on our Sapphire Rapids VMs). GCC honours an explicit -mno-* whatever its position
#   relative to the -march=native that ggml adds.
# - No web UI (no npm, no download at build time), no libcurl, no OpenSSL: loopback HTTP only.
set -euo pipefail

VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$ROOT/../refs/llama.cpp}"
JOBS="${JOBS:-1}"

if [ ! -f "$DEST/CMakeLists.txt" ]; then
    dl="$(mktemp -d)"
    trap 'rm -rf "$dl"' EXIT
    pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$dl"
    sdist="$dl/llama_cpp_python-$VERSION.tar.gz"
    echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet -
    tar xzf "$sdist" -C "$dl" "llama_cpp_python-$VERSION/vendor/llama.cpp"
    mkdir -p "$(dirname "$DEST")"
    rm -rf "$DEST"
    mv "$dl/llama_cpp_python-$VERSION/vendor/llama.cpp" "$DEST"
    echo "llama.cpp sources from llama-cpp-python $VERSION at $DEST"
fi

DEST="$(cd "$DEST" && pwd)"
extra=""
if [ "$(uname -m)" = "x86_64" ]; then
    extra="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi

cd "$DEST"
cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="$extra" -DCMAKE_CXX_FLAGS="$extra" \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
nice -n 10 cmake --build build -j"$JOBS" --target llama-server llama-bench
echo "built: $DEST/build/bin/llama-server $DEST/build/bin/llama-bench"
