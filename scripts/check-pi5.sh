#!/usr/bin/env bash
# The Raspberry Pi 5 build, run: cross-builds both daemons for aarch64 (scripts/build-board.sh
# pi5, skipped with SKIP_BUILD=1 when they are there) and runs the aarch64 `outpost` under
# qemu-aarch64 (Debian qemu-user-static, emulating a Cortex-A76): `synth-model --preset tiny`,
# `serve` with the router loaded (the aarch64 ONNX Runtime from the onnxruntime wheel), and a
# chat request answered locally through the Unix socket. Slow under emulation; prints the time
# of each step.
#
# Not in CI: the cross build alone takes longer than CI's budget allows; its run is reported in
# docs/boards.md.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
bin=$target_dir/aarch64-unknown-linux-gnu/release/outpost
qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
[ -n "$qemu" ] || { echo "check-pi5: qemu-aarch64 is missing (apt-get install qemu-user-static)" >&2; exit 2; }
if [ "${SKIP_BUILD:-0}" != 1 ] || [ ! -x "$bin" ]; then
    scripts/build-board.sh pi5
fi
ort=$repo/vendor/onnxruntime-aarch64/libonnxruntime.so
[ -e "$ort" ] || ONNXRUNTIME_ARCH=aarch64 scripts/fetch_onnxruntime.sh

# qemu-user 7.2 shows the emulated program the host's /proc/cpuinfo (an x86 one; QEMU emulates it
# for aarch64 only from 8.1 on), and ONNX Runtime's CPU detection crashes on it while the library
# loads (SIGSEGV inside dlopen). So the run gets a Raspberry Pi 5's cpuinfo (four Cortex-A76,
# part 0xd0b), bind-mounted over /proc/cpuinfo in a private mount namespace of its own: nothing
# changes outside it. Needs root (or unshare's user namespaces).
if [ -z "${PI5_CPUINFO:-}" ] && ! grep -q "CPU implementer" /proc/cpuinfo; then
    cpuinfo=$(mktemp)
    for i in 0 1 2 3; do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$i"
    done > "$cpuinfo"
    printf 'Model\t\t: Raspberry Pi 5 Model B Rev 1.0\n' >> "$cpuinfo"
    export PI5_CPUINFO=$cpuinfo SKIP_BUILD=1
    status=0
    unshare --mount --propagation private bash -c 'mount --bind "$PI5_CPUINFO" /proc/cpuinfo && exec "$0"' "$0" || status=$?
    rm -f "$cpuinfo"
    exit "$status"
fi

work=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
t0=$EPOCHREALTIME
step() { awk -v a="$t0" -v b="$EPOCHREALTIME" -v s="$1" 'BEGIN { printf "  %-44s %6.1f s\n", s, b - a }'; t0=$EPOCHREALTIME; }
# The aarch64 binary and its libraries (libgomp, libstdc++, glibc) from Debian's cross sysroot.
run() { QEMU_LD_PREFIX=/usr/aarch64-linux-gnu QEMU_CPU=cortex-a76 "$qemu" "$bin" "$@"; }

echo "== outpost (aarch64) under $(basename "$qemu") $("$qemu" --version | head -1 | awk '{print $3}')"
run --version
step "outpost --version"
run synth-model --preset tiny --quant q4_k_m --seed 1 --out "$work/tiny.gguf" >/dev/null
step "synth-model --preset tiny"

cat > "$work/outpost.toml" <<EOF
[model]
path = "$work/tiny.gguf"
context = 512
threads = 2

[api]
socket = "$work/outpost.sock"
parallel = 1

[router]
dir = "$repo/runtime/router"
onnxruntime = "$ort"

[cache]
path = "$work/cache.db"
EOF
run check-config --config "$work/outpost.toml" >/dev/null
step "check-config"

# Not through run(): $! must be qemu's own pid (it passes SIGTERM on to the program).
QEMU_LD_PREFIX=/usr/aarch64-linux-gnu QEMU_CPU=cortex-a76 "$qemu" "$bin" serve --config "$work/outpost.toml" \
    > "$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1200); do
    [ -S "$work/outpost.sock" ] && curl -sf --unix-socket "$work/outpost.sock" http://x/readyz >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log"; echo "check-pi5: serve exited" >&2; exit 1; }
    sleep 0.25
done
step "serve: ready (model loaded)"

status=$(curl -sf --unix-socket "$work/outpost.sock" http://x/v1/outpost/status)
echo "$status" | python3 -c 'import json,sys; r=json.load(sys.stdin)["router"]; assert r["loaded"], r; print("  router loaded:", r["info"].get("version", r["info"]))'
answer=$(curl -sf --unix-socket "$work/outpost.sock" http://x/v1/chat/completions \
    -H 'content-type: application/json' \
    -d '{"messages":[{"role":"user","content":"Say hello to the board."}],"max_tokens":8,"temperature":0}')
step "chat request (8 tokens)"
echo "$answer" | python3 -c '
import json, sys
a = json.load(sys.stdin)
route = a["outpost"]
assert route["route"] == "local", route
assert a["usage"]["completion_tokens"] > 0, a["usage"]
print("  answered locally:", a["usage"], "| reasons:", route.get("reasons"))
print("  router complexity:", route.get("complexity"))
'
kill -TERM "$pid"
wait "$pid" || { echo "check-pi5: serve exited with $?" >&2; cat "$work/serve.log"; exit 1; }
pid=
step "SIGTERM: clean exit"
echo "check-pi5: all good"
