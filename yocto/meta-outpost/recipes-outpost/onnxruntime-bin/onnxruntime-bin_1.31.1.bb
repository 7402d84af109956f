SUMMARY = "ONNX Runtime shared library, prebuilt, for Outpost's prompt router"
DESCRIPTION = "libonnxruntime.so taken unchanged from Microsoft's onnxruntime wheel on PyPI \
(manylinux_2_28: glibc 2.28 or later), installed to /usr/lib/outpost, where the outpost \
daemon loads it with dlopen (ort, load-dynamic). The CPU execution provider only."
HOMEPAGE = "https://onnxruntime.ai"
SECTION = "libs"

# MIT for ONNX Runtime; ThirdPartyNotices.txt lists the components compiled into the library
# (protobuf, abseil, Eigen, ...) with their licenses, and goes into the license manifest.
LICENSE = "MIT"
LIC_FILES_CHKSUM = "\
    file://onnxruntime/LICENSE;md5=0f7e3b1308cb5c00b372a6e78835732d \
    file://onnxruntime/ThirdPartyNotices.txt;md5=ea090a03326d526adefc1194872d3159 \
"

# The library in every cp3xx wheel of a release is the same; the cp312 ones are used. A wheel
# is a zip: downloadfilename makes bitbake unzip it, subdir puts it where S points.
ORT_PYPI = "https://files.pythonhosted.org/packages"
ORT_WHEEL = "onnxruntime-${PV}-cp312-cp312-manylinux_2_28"
ORT_UNPACK = "downloadfilename=${BP}-${TARGET_ARCH}.zip;subdir=${BP}"
SRC_URI:aarch64 = "${ORT_PYPI}/ba/e4/1ed1a7a5f4702d899091fa2b976d377995250c307326ec8dc9ae6378aa13/${ORT_WHEEL}_aarch64.whl;name=aarch64;${ORT_UNPACK}"
SRC_URI:x86-64 = "${ORT_PYPI}/eb/27/c6a823bac55b2977bea2027c3ec9393a2c1002cb9a09eb40354563e02730/${ORT_WHEEL}_x86_64.whl;name=x86-64;${ORT_UNPACK}"
SRC_URI[aarch64.sha256sum] = "0b9a492176886992e0e875f06bc0367e333f5fff11711a2d642e18b02f3009cc"
SRC_URI[x86-64.sha256sum] = "1f3dea47f2f0e5117c2404cea7d21fd253ae7836a3bf167a501cdfbb2600d536"
# base.bbclass adds unzip-native only for URLs ending in .zip.
do_unpack[depends] += "unzip-native:do_populate_sysroot"

COMPATIBLE_HOST = "(aarch64|x86_64).*-linux"

inherit bin_package

# Not a symlink: the daemon opens this exact name, and a .so symlink outside -dev is a QA error.
do_install() {
    install -D -m 0755 ${S}/onnxruntime/capi/libonnxruntime.so.${PV} ${D}${libdir}/outpost/libonnxruntime.so
}

FILES:${PN} = "${libdir}/outpost"
# Stripped upstream (a prebuilt binary: there is nothing to split off for -dbg).
# nooelint: oelint.vars.insaneskip
INSANE_SKIP:${PN} += "already-stripped"
