//! Device profiles: the boards Outpost is qualified on, their memory, and how much of it the
//! operating system and firmware keep; and `auto`, the board this is running on.
//!
//! Detection (`auto`) reads three files under a root directory (`/` on a device, a fake tree in
//! tests): `proc/device-tree/model` names the board on both families ("Raspberry Pi 5 Model B
//! Rev 1.0", "NVIDIA Jetson Orin Nano Developer Kit"); `etc/nv_tegra_release` marks an L4T
//! (Jetson) system when the device tree does not say which module it is; `proc/meminfo`'s
//! `MemTotal` picks the memory variant (the smallest nominal size at or above it). A machine
//! that is none of these gets a `host` profile with its `MemTotal` as its memory.

use std::path::Path;

use serde::Serialize;

use super::repack::CpuKind;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Where a board's accelerator takes its memory from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryKind {
    /// CPU and GPU share the DRAM (Jetson): GPU-offloaded weights count against it.
    Unified,
    /// No GPU llama.cpp can use (Raspberry Pi): everything runs on the CPU.
    CpuOnly,
}

/// A board.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// The name given to `--device` (`jetson-orin-nano-8gb`, `pi5-8gb`, `host`).
    pub name: String,
    /// What it is, for people.
    pub description: String,
    /// The memory fitted: the nominal size for named boards (`8 GB` modules carry 8 GiB of
    /// DRAM), `MemTotal` for `host`.
    pub memory_bytes: u64,
    /// What the board keeps for itself before Outpost loads anything: firmware carve-outs, the
    /// kernel, a headless userspace. An assumption per family, not a measurement (see
    /// `docs/boards.md`).
    pub os_reserve_bytes: u64,
    /// Unified memory (Jetson) or CPU only.
    pub memory: MemoryKind,
    /// The CPU class (what llama.cpp repacks): Cortex-A76 (Pi 5) and Cortex-A78AE (Orin) have
    /// the dot-product extension and no i8mm; `host` is this machine.
    pub cpu: CpuKind,
}

/// One family of boards: name prefix, description, sizes (GiB), reserve, memory kind.
struct Family {
    prefix: &'static str,
    description: &'static str,
    sizes_gib: &'static [u64],
    os_reserve: u64,
    memory: MemoryKind,
    /// Lower-case substrings of `/proc/device-tree/model` that identify it.
    model_names: &'static [&'static str],
}

/// The qualified boards. Reserves: Jetson modules lose ~0.6–0.8 GiB to carve-outs (the
/// `MemTotal` of an 8 GB Orin Nano is about 7.4 GiB) and a headless L4T userspace takes about
/// 0.5 GiB more; a Pi 5 loses ~0.1 GiB to firmware and CMA and Raspberry Pi OS Lite takes about
/// 0.2 GiB.
const FAMILIES: &[Family] = &[
    Family {
        prefix: "jetson-orin-nano",
        description: "NVIDIA Jetson Orin Nano",
        sizes_gib: &[4, 8],
        os_reserve: 1280 * MIB,
        memory: MemoryKind::Unified,
        model_names: &["orin nano"],
    },
    Family {
        prefix: "jetson-orin-nx",
        description: "NVIDIA Jetson Orin NX",
        sizes_gib: &[8, 16],
        os_reserve: 1280 * MIB,
        memory: MemoryKind::Unified,
        model_names: &["orin nx"],
    },
    Family {
        prefix: "jetson-agx-orin",
        description: "NVIDIA Jetson AGX Orin",
        sizes_gib: &[32, 64],
        os_reserve: 1536 * MIB,
        memory: MemoryKind::Unified,
        model_names: &["agx orin"],
    },
    Family {
        prefix: "pi5",
        description: "Raspberry Pi 5",
        sizes_gib: &[2, 4, 8, 16],
        os_reserve: 320 * MIB,
        memory: MemoryKind::CpuOnly,
        model_names: &["raspberry pi 5", "raspberry pi compute module 5"],
    },
];

fn profile(family: &Family, gib: u64) -> Profile {
    Profile {
        name: format!("{}-{gib}gb", family.prefix),
        description: format!("{} {gib} GB", family.description),
        memory_bytes: gib * GIB,
        os_reserve_bytes: family.os_reserve,
        memory: family.memory,
        cpu: CpuKind::ArmDotprod,
    }
}

/// Every named profile, in the order `--device help` lists them.
pub fn all() -> Vec<Profile> {
    FAMILIES.iter().flat_map(|f| f.sizes_gib.iter().map(move |&gib| profile(f, gib))).collect()
}

/// The named profile, if there is one.
pub fn named(name: &str) -> Option<Profile> {
    all().into_iter().find(|p| p.name == name)
}

/// What `auto` found, and from which evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Detected {
    /// The profile chosen.
    pub profile: Profile,
    /// `/proc/device-tree/model`, if readable.
    pub model: Option<String>,
    /// `MemTotal` in bytes, if readable.
    pub mem_total_bytes: Option<u64>,
}

/// `MemTotal` (or another `/proc/meminfo` field) in bytes.
pub fn meminfo(root: &Path, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(root.join("proc/meminfo")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    })
}

/// Detects the board under `root` (`/` on a device).
pub fn detect(root: &Path) -> Detected {
    let model = std::fs::read(root.join("proc/device-tree/model"))
        .ok()
        // The device tree's strings end in a NUL.
        .map(|b| String::from_utf8_lossy(&b).trim_end_matches('\0').trim().to_owned())
        .filter(|m| !m.is_empty());
    let tegra = root.join("etc/nv_tegra_release").exists();
    let mem_total = meminfo(root, "MemTotal");
    let lower = model.as_deref().unwrap_or("").to_lowercase();
    let family = FAMILIES
        .iter()
        .find(|f| f.model_names.iter().any(|n| lower.contains(n)))
        // An L4T system whose device tree names no module we know: the smallest Jetson family
        // with a variant large enough for its memory.
        .or_else(|| tegra.then(|| FAMILIES.iter().find(|f| f.prefix.starts_with("jetson"))).flatten());
    let profile = match (family, mem_total) {
        (Some(f), Some(total)) => {
            // MemTotal is below the nominal size (carve-outs): the smallest size at or above it.
            let gib = f
                .sizes_gib
                .iter()
                .copied()
                .find(|&g| g * GIB >= total)
                .unwrap_or_else(|| f.sizes_gib.last().copied().unwrap_or(0));
            profile(f, gib)
        }
        (Some(f), None) => profile(f, f.sizes_gib.first().copied().unwrap_or(0)),
        (None, total) => host(total.unwrap_or(0)),
    };
    Detected { profile, model, mem_total_bytes: mem_total }
}

/// A machine that is not a known board: its `MemTotal` (already net of firmware) and a reserve
/// of 5 % for the OS, between 256 MiB and 1 GiB.
fn host(mem_total: u64) -> Profile {
    Profile {
        name: "host".into(),
        description: "this machine (not a known board)".into(),
        memory_bytes: mem_total,
        os_reserve_bytes: (mem_total / 20).clamp(256 * MIB, GIB),
        memory: MemoryKind::CpuOnly,
        cpu: CpuKind::this_machine(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn root(model: Option<&str>, tegra: bool, mem_total_kib: Option<u64>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(model) = model {
            std::fs::create_dir_all(dir.path().join("proc/device-tree")).unwrap();
            std::fs::write(dir.path().join("proc/device-tree/model"), format!("{model}\0")).unwrap();
        }
        if tegra {
            std::fs::create_dir_all(dir.path().join("etc")).unwrap();
            std::fs::write(dir.path().join("etc/nv_tegra_release"), "# R36 (release), REVISION: 4.0\n")
                .unwrap();
        }
        if let Some(kib) = mem_total_kib {
            std::fs::create_dir_all(dir.path().join("proc")).unwrap();
            let text = format!(
                "MemTotal:       {kib} kB\nMemFree:         1000 kB\nMemAvailable:   {} kB\n",
                kib / 2
            );
            std::fs::write(dir.path().join("proc/meminfo"), text).unwrap();
        }
        dir
    }

    #[test]
    fn every_family_and_size_is_named() {
        let names: Vec<String> = all().into_iter().map(|p| p.name).collect();
        for name in [
            "jetson-orin-nano-4gb",
            "jetson-orin-nano-8gb",
            "jetson-orin-nx-8gb",
            "jetson-orin-nx-16gb",
            "jetson-agx-orin-32gb",
            "jetson-agx-orin-64gb",
            "pi5-2gb",
            "pi5-4gb",
            "pi5-8gb",
            "pi5-16gb",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
        }
        let pi = named("pi5-2gb").unwrap();
        assert_eq!(pi.memory_bytes, 2 * GIB);
        assert_eq!(pi.memory, MemoryKind::CpuOnly);
        assert_eq!(named("jetson-agx-orin-64gb").unwrap().memory, MemoryKind::Unified);
        assert!(named("pi4-8gb").is_none());
    }

    #[test]
    fn detects_boards_from_device_tree_tegra_release_and_meminfo() {
        // A Pi 5 with 8 GB: MemTotal is a little below 8 GiB.
        let r = root(Some("Raspberry Pi 5 Model B Rev 1.0"), false, Some(8_245_000));
        let d = detect(r.path());
        assert_eq!(d.profile.name, "pi5-8gb");
        assert_eq!(d.model.as_deref(), Some("Raspberry Pi 5 Model B Rev 1.0"));
        assert_eq!(d.mem_total_bytes, Some(8_245_000 * 1024));

        // A 2 GB Pi 5.
        let r = root(Some("Raspberry Pi 5 Model B Rev 1.1"), false, Some(2_000_000));
        assert_eq!(detect(r.path()).profile.name, "pi5-2gb");

        // Orin Nano 8 GB developer kit: MemTotal about 7.4 GiB.
        let r = root(Some("NVIDIA Jetson Orin Nano Developer Kit"), true, Some(7_620_000));
        assert_eq!(detect(r.path()).profile.name, "jetson-orin-nano-8gb");

        // Orin NX 16 GB, AGX Orin 64 GB.
        let r =
            root(Some("NVIDIA Jetson Orin NX Engineering Reference Developer Kit"), true, Some(15_600_000));
        assert_eq!(detect(r.path()).profile.name, "jetson-orin-nx-16gb");
        let r = root(Some("Jetson AGX Orin"), true, Some(64_000_000));
        assert_eq!(detect(r.path()).profile.name, "jetson-agx-orin-64gb");

        // L4T without a device-tree model: the smallest Jetson variant that holds MemTotal.
        let r = root(None, true, Some(3_600_000));
        assert_eq!(detect(r.path()).profile.name, "jetson-orin-nano-4gb");

        // Anything else: the host, with its MemTotal.
        let r = root(Some("QEMU Virtual Machine"), false, Some(4_000_000));
        let d = detect(r.path());
        assert_eq!(d.profile.name, "host");
        assert_eq!(d.profile.memory_bytes, 4_000_000 * 1024);
        assert_eq!(d.profile.os_reserve_bytes, 256 * MIB);
        assert_eq!(meminfo(r.path(), "MemAvailable"), Some(2_000_000 * 1024));
    }
}
