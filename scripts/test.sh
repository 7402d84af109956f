#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds, and runs every test: unit tests and the end-to-end tests
# that start real `outpost` daemons on synthetic models through real llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export OUTPOST_TEST_PYTHON="$PWD/.venv/bin/python"
# The daemons are built with test failpoints (a cargo feature; never in packaged builds).
features="outpost/failpoints,outpost-updater/failpoints"
cargo build --workspace --bins --locked --features "$features"
cargo test --workspace --locked --features "$features" -- "$@"
# Packaging checks: the systemd units (verify, exposure <= 2.0, users and directories; on the
# binaries just built), the Yocto layer (oelint-adv, crate list current) and the Containerfile
# (hadolint). The .deb build and the debootstrap install test are heavier: scripts/package.sh and
# scripts/install-test.sh (packaging/README.md).
OUTPOST_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" ./scripts/check-units.sh
./scripts/check-yocto.sh
./scripts/check-container.sh
