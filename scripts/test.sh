#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds, and runs every test: unit tests and the end-to-end tests
# that start real `outpost` daemons on synthetic models through real llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export OUTPOST_TEST_PYTHON="$PWD/.venv/bin/python"
cargo build --workspace --bins --locked
cargo test --workspace --locked -- "$@"
