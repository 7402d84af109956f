#!/usr/bin/env bash
# Builds the Debian packages `outpost` and `outpost-updater` (amd64) into target/debian/:
#   1. a release build of both binaries,
#   2. the packaged runtime config checked by the built binary, and the units checked
#      (scripts/check-units.sh),
#   3. `cargo deb --no-build` for each package (metadata: [package.metadata.deb] in
#      runtime/Cargo.toml and updater/Cargo.toml; debug info split into -dbgsym .ddeb files),
#   4. lintian on each .deb: errors fail the build, warnings are printed.
#
# Needs cargo-deb (`cargo install cargo-deb --locked`), dpkg-dev (dpkg-shlibdeps), lintian,
# systemd (systemd-analyze) and vendor/onnxruntime/libonnxruntime.so
# (scripts/fetch_onnxruntime.sh).
#
# CPU: by default for any amd64 machine (ggml built with -march=x86-64: no AVX2/FMA, which
# Atom/Celeron-class edge boxes lack, but several times slower decoding where they exist).
# PKG_TARGET_CPU=x86-64-v3 (or a board's CPU) builds for that CPU instead, with
# `-C target-cpu=...`, which llama-cpp-sys-2 hands on to ggml; it uses its own target directory
# so that the shared build cache is not rebuilt with other flags.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
if [ -n "${PKG_TARGET_CPU:-}" ]; then
    target=$target/cpu-$PKG_TARGET_CPU
    export CARGO_TARGET_DIR=$target RUSTFLAGS="${RUSTFLAGS:-} -C target-cpu=$PKG_TARGET_CPU"
fi
out=$repo/target/debian
t0=$EPOCHREALTIME
took() { awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f s", b - a }'; }

ort=vendor/onnxruntime/libonnxruntime.so
[ -e "$ort" ] || { echo "package: $ort is missing: run scripts/fetch_onnxruntime.sh" >&2; exit 2; }
command -v cargo-deb >/dev/null || { echo "package: cargo install cargo-deb --locked" >&2; exit 2; }

echo "== release build"
nice cargo build --release --locked -p outpost -p outpost-updater
echo "   $(took)"

echo "== checks"
"$target/release/outpost" check-config --config packaging/config/outpost.toml >/dev/null
echo "packaging/config/outpost.toml: valid"
OUTPOST_BIN_DIR=$target/release scripts/check-units.sh

echo "== cargo deb"
mkdir -p "$out"
for p in outpost outpost-updater; do
    cargo deb -p "$p" --no-build --dbgsym --output "$out"
done

echo "== dependencies"
# Each package must depend on what dpkg-shlibdeps finds for all its ELF files together. The
# Cargo.toml files list it by hand: cargo-deb's $auto names libstdc++6 twice for the runtime (once
# per file) and leaves libgcc-s1 out.
shlibs() { # deb -> "libc6 (>= 2.34), ..." for the ELF files in it
    local dir elfs
    dir=$(mktemp -d)
    dpkg-deb -x "$1" "$dir/pkg"
    mkdir "$dir/debian" && touch "$dir/debian/control"
    mapfile -t elfs < <(find "$dir/pkg" -type f -exec sh -c 'head -c4 "$1" | grep -q ELF' _ {} \; -print)
    (cd "$dir" && dpkg-shlibdeps -O "${elfs[@]}" 2>/dev/null | sed 's/^shlibs:Depends=//')
    rm -rf "$dir"
}
for p in outpost outpost-updater; do
    deb=$(ls -t "$out/${p}_"*_amd64.deb | head -1)
    declared=$(dpkg-deb -f "$deb" Depends)
    needed=$(shlibs "$deb")
    missing=$(echo "$needed" | tr ',' '\n' | sed 's/^ *//' | while read -r dep; do
        case ", $declared," in *", $dep,"*) ;; *) echo "$dep" ;; esac
    done)
    if [ -n "$missing" ]; then
        echo "$p: Depends lacks what dpkg-shlibdeps finds: $needed" >&2
        exit 1
    fi
    echo "$p: Depends: $declared"
done

echo "== lintian"
status=0
for p in outpost outpost-updater; do
    deb=$(ls -t "$out/${p}_"*_amd64.deb | head -1)
    # Exit status: 1 for errors (--fail-on error); the tags are printed either way.
    lintian --fail-on error --show-overrides "$deb" || status=1
    echo "$(basename "$deb"): $(du -h "$deb" | cut -f1) ($(dpkg-deb -f "$deb" Installed-Size) KiB installed)"
done
ls -l "$out"
echo "package: done in $(took)"
exit "$status"
