SUMMARY = "On-device LLM runtime: llama.cpp behind an OpenAI-compatible Unix socket"
DESCRIPTION = "The outpost daemon: llama.cpp (through llama-cpp-2) serving an \
OpenAI-compatible HTTP API on a Unix socket under systemd, with a prompt router (an ONNX \
model run by ONNX Runtime) and an offline response cache."

require outpost.inc

# Apache-2.0: Outpost (the workspace's `license` line; the repository has no LICENSE file yet)
# and the router model (NOTICE). MIT: llama.cpp/ggml, compiled into the binary from the
# llama-cpp-sys-2 crate. The other crates linked in carry their own licenses (mostly
# "MIT OR Apache-2.0") and are not itemised here.
LICENSE = "Apache-2.0 & MIT"
LIC_FILES_CHKSUM = "\
    file://Cargo.toml;beginline=9;endline=9;md5=2507bd5f0713f05419cd2f22fa06fe62 \
    file://runtime/router/NOTICE;md5=6073a0ad321ebda844d69d2e0ebcba23 \
    file://${CARGO_VENDORING_DIRECTORY}/llama-cpp-sys-2-0.1.161/llama.cpp/LICENSE;md5=223b26b3c1143120c87e2b13111d3e99 \
"

# llama-cpp-sys-2 builds llama.cpp with CMake and generates its Rust bindings with bindgen,
# which loads libclang (clang-native: meta-clang before whinlatter, oe-core after).
DEPENDS += "clang-native cmake-native"

# llama-cpp-sys-2 mis-passes Arm CPU flags to llama.cpp's CMake build; see the patch.
SRC_URI += "file://0001-build.rs-Arm-CPU-flags-that-GCC-and-clang-accept.patch;patchdir=${CARGO_VENDORING_DIRECTORY}/llama-cpp-sys-2-0.1.161"

require outpost-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd

# GPU offload on Jetson (meta-tegra machines carry the "cuda" override): llama.cpp's CUDA
# backend without virtual memory management, which Tegra's integrated GPU lacks
# (GGML_CUDA_NO_VMM), compiled for CUDA_ARCHITECTURES (87 on Orin).
OUTPOST_DEFAULT_GPU = ""
OUTPOST_DEFAULT_GPU:cuda = "cuda"
PACKAGECONFIG ??= "${OUTPOST_DEFAULT_GPU}"
PACKAGECONFIG[cuda] = ",,cuda-libraries"
inherit_defer ${@bb.utils.contains('PACKAGECONFIG', 'cuda', 'cuda', '', d)}
OUTPOST_CARGO_FEATURES = "${@bb.utils.contains('PACKAGECONFIG', 'cuda', '--features llama-cpp-2/cuda-no-vmm', '', d)}"

# CPU of the boards we know. OUTPOST_TARGET_CPU goes to rustc (-C target-cpu), which
# llama-cpp-sys-2 also hands to the C/C++ compiler (as -mcpu, with the patch);
# OUTPOST_GGML_ARM_ARCH is the ISA ggml's Arm kernels are compiled for (llama-cpp-sys-2's
# default, armv8-a, lacks the dot-product instructions of the quantized matmuls). Set both in
# local.conf for another board; an empty OUTPOST_TARGET_CPU keeps the tune's generic code.
def outpost_board_cpu(d, field):
    boards = {
        'raspberrypi5': ('cortex-a76', 'armv8.2-a+dotprod+fp16'),
        'tegra234': ('cortex-a78ae', 'armv8.2-a+dotprod+fp16'),
    }
    for override in (d.getVar('MACHINEOVERRIDES') or '').split(':'):
        if override in boards:
            return boards[override][field]
    return ''

OUTPOST_TARGET_CPU ?= "${@outpost_board_cpu(d, 0)}"
OUTPOST_GGML_ARM_ARCH ?= "${@outpost_board_cpu(d, 1) or 'armv8-a'}"
RUSTFLAGS:append = " ${@'-C target-cpu=' + d.getVar('OUTPOST_TARGET_CPU') if d.getVar('OUTPOST_TARGET_CPU') else ''}"
GGML_CPU_ARM_ARCH:aarch64 = "${OUTPOST_GGML_ARM_ARCH}"
export GGML_CPU_ARM_ARCH

# bindgen parses llama.h for the target, against the target sysroot.
export LIBCLANG_PATH = "${STAGING_LIBDIR_NATIVE}"
BINDGEN_EXTRA_CLANG_ARGS = "${HOST_CC_ARCH}${TOOLCHAIN_OPTIONS} --target=${TARGET_SYS}"
export BINDGEN_EXTRA_CLANG_ARGS

# llama.cpp's CMake run: cross-compile, and look only in this recipe's sysroots (left alone,
# CMake probes the build host, e.g. finds its OpenSSL for llama.cpp's vendored cpp-httplib).
# The cmake crate reads TARGET_CMAKE_TOOLCHAIN_FILE for target builds only.
export TARGET_CMAKE_TOOLCHAIN_FILE = "${WORKDIR}/outpost-toolchain.cmake"
do_configure:append() {
    cat > ${WORKDIR}/outpost-toolchain.cmake <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR ${TARGET_ARCH})
set(CMAKE_C_COMPILER ${RUST_TARGET_CC})
set(CMAKE_CXX_COMPILER ${RUST_TARGET_CXX})
set(CMAKE_FIND_ROOT_PATH ${STAGING_DIR_HOST} ${STAGING_DIR_NATIVE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
EOF
}

# The CUDA settings meta-tegra's cuda.bbclass gives cmake.bbclass recipes.
outpost_cmake_cuda() {
    cat >> ${WORKDIR}/outpost-toolchain.cmake <<EOF
set(CMAKE_CUDA_TOOLKIT_ROOT_DIR "${STAGING_DIR_NATIVE}/usr/local/cuda-${CUDA_VERSION}" CACHE PATH "" FORCE)
set(CMAKE_CUDA_TOOLKIT_TARGET_DIR "${STAGING_DIR_HOST}/usr/local/cuda-${CUDA_VERSION}" CACHE PATH "" FORCE)
set(CMAKE_CUDA_COMPILER ${OECMAKE_CUDA_COMPILER})
set(CMAKE_CUDA_ARCHITECTURES ${OECMAKE_CUDA_ARCHITECTURES})
EOF
}
outpost_cmake_cuda[doc] = "Adds meta-tegra's CUDA settings to the CMake toolchain file"
do_configure[postfuncs] += "${@bb.utils.contains('PACKAGECONFIG', 'cuda', 'outpost_cmake_cuda', '', d)}"

# Only the daemon's package: the workspace also holds the updater and the end-to-end tests.
do_compile() {
    oe_cargo_build -p outpost ${OUTPOST_CARGO_FEATURES}
}

do_install:append() {
    # The router model, where the daemon looks first (runtime/src/router/locate.rs).
    install -d ${D}${datadir}/outpost/router
    for f in router.onnx router.json tokenizer.json NOTICE; do
        install -m 0644 ${S}/runtime/router/$f ${D}${datadir}/outpost/router/
    done

    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/packaging/systemd/outpost.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/packaging/systemd/outpost.socket ${D}${systemd_system_unitdir}/
    install -D -m 0644 ${S}/packaging/sysusers.d/outpost.conf ${D}${nonarch_libdir}/sysusers.d/outpost.conf
    install -D -m 0644 ${S}/packaging/tmpfiles.d/outpost.conf ${D}${nonarch_libdir}/tmpfiles.d/outpost.conf
    install -D -m 0644 ${S}/packaging/config/outpost.toml ${D}${sysconfdir}/outpost/outpost.toml
}

SYSTEMD_SERVICE:${PN} = "outpost.socket outpost.service"
# The runtime's user and group, as packaging/sysusers.d/outpost.conf declares them for
# systemd-sysusers; useradd creates them in the image at rootfs time. Apps that use the API
# join group outpost.
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --home-dir ${localstatedir}/lib/outpost \
    --no-create-home --shell ${base_sbindir}/nologin outpost"

# Built for the machine's cores, not just for the tune.
PACKAGE_ARCH = "${MACHINE_ARCH}"

FILES:${PN} += "${nonarch_libdir}/sysusers.d ${nonarch_libdir}/tmpfiles.d"
CONFFILES:${PN} = "${sysconfdir}/outpost/outpost.toml"

# The router loads ONNX Runtime with dlopen, from /usr/lib/outpost/libonnxruntime.so unless the
# config says otherwise: set OUTPOST_ONNXRUNTIME to another provider (e.g. "onnxruntime" from
# meta-onnxruntime) together with a config.d drop-in naming its library (`[router] onnxruntime`).
OUTPOST_ONNXRUNTIME ?= "onnxruntime-bin"
# ca-certificates: the cloud route (reqwest, native roots).
RDEPENDS:${PN} += "${OUTPOST_ONNXRUNTIME} ca-certificates"

# The binary holds one absolute build path: env!("CARGO_MANIFEST_DIR"), the development-tree
# fallback of router::locate (never taken on a device, where /usr/share/outpost/router exists).
# Until that fallback is compiled out of release builds, the buildpaths check (an error from
# walnascar on) fails every build from git.
# nooelint: oelint.vars.insaneskip
INSANE_SKIP:${PN} += "buildpaths"
