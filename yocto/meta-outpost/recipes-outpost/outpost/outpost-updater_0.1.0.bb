SUMMARY = "Outpost updater: signed delta model updates, atomic switch, roll back"
DESCRIPTION = "outpost-updater fetches a signed manifest, downloads and verifies model \
releases (full or bsdiff delta), switches the runtime's model store atomically, tries the new \
model on the running daemon and rolls back when the trial fails."

require outpost.inc
require outpost-crates.inc

# Apache-2.0: Outpost (the workspace's `license` line). BSD-3-Clause: zstd, compiled in by the
# zstd-sys crate. The other crates linked in carry their own licenses (mostly
# "MIT OR Apache-2.0") and are not itemised here.
LICENSE = "Apache-2.0 & BSD-3-Clause"
LIC_FILES_CHKSUM = "\
    file://Cargo.toml;beginline=9;endline=9;md5=2507bd5f0713f05419cd2f22fa06fe62 \
    file://${CARGO_VENDORING_DIRECTORY}/zstd-sys-2.1.2+zstd.1.5.7/zstd/LICENSE;md5=0822a32f7acdbe013606746641746ee8 \
"

inherit cargo cargo-update-recipe-crates systemd useradd

# Only the updater's package (no llama.cpp here, so no cmake or clang either).
do_compile() {
    oe_cargo_build -p outpost-updater
}

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/packaging/systemd/outpost-updater.service ${D}${systemd_system_unitdir}/
    install -D -m 0644 ${S}/packaging/sysusers.d/outpost-updater.conf ${D}${nonarch_libdir}/sysusers.d/outpost-updater.conf
    install -D -m 0644 ${S}/packaging/tmpfiles.d/outpost-updater.conf ${D}${nonarch_libdir}/tmpfiles.d/outpost-updater.conf
    install -D -m 0644 ${S}/packaging/config/updater.toml ${D}${sysconfdir}/outpost/updater.toml
}

SYSTEMD_SERVICE:${PN} = "outpost-updater.service"
# Its own user, in group outpost (packaging/sysusers.d/outpost-updater.conf): it owns the model
# store, the runtime reads it, and it reaches the runtime's socket. The group is created here
# too, in case the updater's package is installed first.
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system outpost"
USERADD_PARAM:${PN} = "--system --user-group --groups outpost \
    --home-dir ${localstatedir}/lib/outpost/models --no-create-home \
    --shell ${base_sbindir}/nologin outpost-updater"

FILES:${PN} += "${nonarch_libdir}/sysusers.d ${nonarch_libdir}/tmpfiles.d"
CONFFILES:${PN} = "${sysconfdir}/outpost/updater.toml"

# ca-certificates: HTTPS to the update server (rustls with the system's roots). The updater
# tries each release on the running daemon, so it wants the daemon installed.
RDEPENDS:${PN} += "ca-certificates"
RRECOMMENDS:${PN} += "outpost"
