#!/usr/bin/env bash
# Builds Outpost for a board on this x86-64 Debian machine.
#
#   scripts/build-board.sh pi5     both daemons for aarch64-unknown-linux-gnu, Raspberry Pi 5
#                                  (Cortex-A76): target/aarch64-unknown-linux-gnu/release/
#   scripts/build-board.sh cuda    the runtime with its `cuda` feature for x86-64 (proves the
#                                  feature builds: nvcc and the CUDA libraries from PyPI wheels),
#                                  target/cuda/release/outpost. For Jetson Orin see docs/boards.md.
#
# pi5 needs (Debian): gcc-aarch64-linux-gnu g++-aarch64-linux-gnu cmake clang libclang-dev, and
# the rustup target (`rustup target add aarch64-unknown-linux-gnu`, done here when missing).
# ONNX Runtime's aarch64 library comes from the aarch64 `onnxruntime` wheel
# (vendor/onnxruntime-aarch64/, scripts/fetch_onnxruntime.sh). scripts/check-pi5.sh runs the
# result under qemu-aarch64.
#
# CPU flags. `-C target-cpu=cortex-a76` reaches llama.cpp through llama-cpp-sys-2 0.1.161, which
# has two faults on aarch64 (the Yocto layer patches its build.rs for the same two:
# yocto/meta-outpost/recipes-outpost/outpost/files/0001-build.rs-*.patch): it passes the CPU as
# `-march=cortex-a76` (GCC and clang take a CPU name only as -mcpu on Arm) and pins ggml-cpu to
# `-march=armv8-a`, which would compile the quantized kernels without the dot-product and fp16
# instructions the A76 has. Here a thin compiler wrapper rewrites those two flags instead of
# patching the registry copy: -march=<cpu> -> -mcpu=<cpu>, -march=armv8-a -> $ARM_ARCH.
#
# cuda needs Python 3 and pip: it installs CUDA 13's compiler, runtime and cuBLAS wheels into
# target/cuda/toolkit/ (they form a toolkit tree, nvidia/cu13/). Only CUDA_ARCHS (default 87,
# Jetson Orin's compute capability) are compiled; each one more costs about as long again. It
# builds `cuda-no-vmm`, Jetson's variant (a plain `cuda` build also links libcuda, the driver,
# which no wheel has).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
t0=$EPOCHREALTIME
took() { awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f s", b - a }'; }
die() { echo "build-board: $*" >&2; exit 2; }

pi5() {
    local triple=aarch64-unknown-linux-gnu cpu=cortex-a76
    local arm_arch=${ARM_ARCH:-armv8.2-a+dotprod+fp16}
    for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ cmake clang; do
        command -v "$tool" >/dev/null || die "$tool is missing (apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu cmake clang libclang-dev)"
    done
    rustup target list --installed 2>/dev/null | grep -qx "$triple" || rustup target add "$triple"
    ONNXRUNTIME_ARCH=aarch64 scripts/fetch_onnxruntime.sh

    local wrap=$target_dir/board-cc
    mkdir -p "$wrap"
    for cc in gcc g++; do
        cat > "$wrap/aarch64-linux-gnu-$cc" <<EOF
#!/usr/bin/env bash
# Written by scripts/build-board.sh: the two Arm CPU-flag fixes llama-cpp-sys-2 needs.
args=()
for a in "\$@"; do
    case "\$a" in
        -march=$cpu) args+=(-mcpu=$cpu) ;;
        -march=armv8-a) args+=(-march=$arm_arch) ;;
        *) args+=("\$a") ;;
    esac
done
exec aarch64-linux-gnu-$cc "\${args[@]}"
EOF
        chmod +x "$wrap/aarch64-linux-gnu-$cc"
    done

    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=$wrap/aarch64-linux-gnu-gcc
    export CXX_aarch64_unknown_linux_gnu=$wrap/aarch64-linux-gnu-g++
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu"
    export PKG_CONFIG_ALLOW_CROSS=1
    # RUSTFLAGS replaces .cargo/config.toml's target-cpu=native (build scripts stay native).
    export RUSTFLAGS="-C target-cpu=$cpu"

    echo "== cargo build --release --target $triple (target-cpu=$cpu, ggml $arm_arch)"
    nice cargo build --release --locked --target "$triple" -p outpost -p outpost-updater
    local out=$target_dir/$triple/release
    echo "   $(took)"
    file "$out/outpost" "$out/outpost-updater" | sed 's/, BuildID.*//'
    # The dot-product kernels are really in: sdot/udot instructions in the binary.
    local sdot
    sdot=$(aarch64-linux-gnu-objdump -d --no-show-raw-insn "$out/outpost" | grep -cE '\s(s|u)dot\s' || true)
    echo "   $sdot dot-product instructions in outpost"
    [ "$sdot" -gt 0 ] || die "no sdot/udot in the binary: ggml was built without dotprod"
}

cuda() {
    # CUDA 13's wheels carry the whole compiler (nvcc, cudafe++, cicc in nvidia-nvvm, the crt
    # headers); the cu12 "nvcc" wheels hold only ptxas. Pinned to what was built and reported.
    local site=$target_dir/cuda/toolkit archs=${CUDA_ARCHS:-87}
    local toolkit=$site/nvidia/cu13
    if [ ! -x "$toolkit/bin/nvcc" ]; then
        echo "== CUDA toolkit from PyPI wheels into $site"
        "${PYTHON:-python3}" -m pip install -q --no-deps --target "$site" \
            nvidia-cuda-nvcc==13.5.37 nvidia-cuda-crt==13.5.37 nvidia-nvvm==13.5.37 \
            nvidia-cuda-runtime==13.5.37 nvidia-cublas==13.10.0.20 nvidia-cuda-cccl==13.3.5.0.6
        # Linkers look for the unversioned names, which the wheels leave out.
        (cd "$toolkit/lib" && for lib in lib*.so.*; do
            base=${lib%%.so.*}.so; [ -e "$base" ] || ln -s "$lib" "$base"; done)
        [ -e "$toolkit/lib64" ] || ln -s lib "$toolkit/lib64"
    fi
    "$toolkit/bin/nvcc" --version | tail -2
    # llama-cpp-sys-2 links cuBLAS statically on Linux (cublas_static, cublasLt_static, culibos),
    # which no wheel ships: empty stand-ins satisfy those names and the shared cuBLAS is linked
    # instead (a JetPack or CUDA toolkit install has the static ones; nothing of this is needed
    # there). No libcuda (the driver) either: `cuda-no-vmm` does not link it.
    local shim=$target_dir/cuda/shim
    mkdir -p "$shim"
    for l in cublas_static cublasLt_static culibos; do [ -e "$shim/lib$l.a" ] || ar rc "$shim/lib$l.a"; done
    export CUDA_PATH=$toolkit CUDA_HOME=$toolkit CUDACXX=$toolkit/bin/nvcc
    export PATH=$toolkit/bin:$PATH
    export CMAKE_CUDA_ARCHITECTURES=$archs
    export CARGO_TARGET_DIR=$target_dir/cuda
    export RUSTFLAGS="-C target-cpu=native -L native=$shim -L native=$toolkit/lib \
        -C link-arg=-Wl,-Bdynamic -C link-arg=-lcublas -C link-arg=-lcublasLt \
        -C link-arg=-Wl,-rpath,$toolkit/lib"
    echo "== cargo build --release --features outpost/cuda-no-vmm (CUDA archs $archs)"
    nice cargo build --release --locked -p outpost --features outpost/cuda-no-vmm
    echo "   $(took)"
    local bin=$CARGO_TARGET_DIR/release/outpost
    ls -l "$bin"
    # The CUDA backend is in: its symbols, cuBLAS and cudart linked.
    echo "   ggml_cuda symbols: $(nm -C "$bin" | grep -c 'ggml_cuda' || true)"
    ldd "$bin" | grep -E 'cublas|cudart' || true
    "$bin" --version
}

case "${1:-}" in
    pi5) pi5 ;;
    cuda) cuda ;;
    *) die "usage: $0 pi5|cuda" ;;
esac
