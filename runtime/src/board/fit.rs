//! The check `outpost serve` makes before loading a model: does the estimate fit the memory
//! this process may use?
//!
//! The limit is the smallest of `MemAvailable` (`/proc/meminfo`: free memory plus what the
//! kernel can reclaim) and the `memory.max` of this process's cgroup and of each cgroup above
//! it (cgroup v2, as systemd's `MemoryMax=` sets it). The estimate compared is the process's
//! parts, without the board's OS reserve (the OS already holds what it holds) and without the
//! reclaimable ones (the file pages of repacked matrices, which the kernel takes back).

use std::path::{Path, PathBuf};

use super::estimate::{self, Part};
use super::validate::{facts, settings};
use crate::config::Config;

/// Where `outpost serve` reads `/proc` and `/sys` from: `$OUTPOST_SYSROOT` (tests point it at
/// a fake tree), else `/`.
pub fn sysroot() -> PathBuf {
    std::env::var_os("OUTPOST_SYSROOT")
        .filter(|r| !r.is_empty())
        .map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// The model does not fit; the message carries the breakdown.
#[derive(Debug, thiserror::Error)]
#[error(
    "the model does not fit in memory: it needs {need} but {available} is available ({source_of_limit}). \
     Estimate:\n{breakdown}Lower model.context (at most {max_context} tokens per slot fit) or api.parallel, \
     use a smaller model, or set model.allow_overcommit = true",
    need = mib(*.needed_bytes),
    available = mib(*.available_bytes),
)]
pub struct DoesNotFit {
    /// The estimate's process parts summed.
    pub needed_bytes: u64,
    /// The memory limit found.
    pub available_bytes: u64,
    /// Where the limit comes from (`MemAvailable`, a cgroup's `memory.max`).
    pub source_of_limit: String,
    /// The parts, one per line.
    pub breakdown: String,
    /// The largest context per slot that would fit.
    pub max_context: u64,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The memory this process may use under `root`, and where that figure comes from; `None` when
/// neither `/proc/meminfo` nor a cgroup limit can be read.
pub fn available(root: &Path) -> Option<(u64, String)> {
    let mut best: Option<(u64, String)> =
        super::profiles::meminfo(root, "MemAvailable").map(|b| (b, "MemAvailable".to_owned()));
    for (limit, file) in cgroup_limits(root) {
        if best.as_ref().is_none_or(|(b, _)| limit < *b) {
            best = Some((limit, format!("memory.max of {}", file.display())));
        }
    }
    best
}

/// The numeric memory limits of this process's cgroup and its ancestors: `memory.max` (cgroup
/// v2, the line `0::/system.slice/outpost.service` of `/proc/self/cgroup`), or
/// `memory.limit_in_bytes` (v1, the line `N:memory:/path`).
fn cgroup_limits(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(text) = std::fs::read_to_string(root.join("proc/self/cgroup")) else { return Vec::new() };
    let mut limits = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next(), fields.next().unwrap_or(""));
        let (base, file) = match controllers {
            Some("") => (root.join("sys/fs/cgroup"), "memory.max"),
            Some(c) if c.split(',').any(|c| c == "memory") => {
                (root.join("sys/fs/cgroup/memory"), "memory.limit_in_bytes")
            }
            _ => continue,
        };
        let mut dir = base.join(path.trim().trim_start_matches('/'));
        loop {
            let at = dir.join(file);
            if let Ok(value) = std::fs::read_to_string(&at) {
                // v2 says `max`; v1 says a number near 2^63 for no limit.
                match value.trim().parse::<u64>() {
                    Ok(limit) if limit < 1 << 60 => limits.push((limit, at)),
                    _ => {}
                }
            }
            if dir == base || !dir.pop() || !dir.starts_with(&base) {
                break;
            }
        }
    }
    limits
}

/// Checks that the configured model fits the memory available under `root`. A model whose
/// header cannot be read passes (loading will say what is wrong with it), as does a machine
/// whose limits cannot be read.
pub fn check(config: &Config, root: &Path) -> Result<(), DoesNotFit> {
    let model = match facts(&config.model.path) {
        Ok(model) => model,
        Err(err) => {
            tracing::debug!(%err, "no memory estimate before loading");
            return Ok(());
        }
    };
    let Some((available_bytes, source_of_limit)) = available(root) else { return Ok(()) };
    let mem_total = super::profiles::meminfo(root, "MemTotal").unwrap_or(available_bytes);
    let detected = super::profiles::detect(root);
    let profile = super::profiles::Profile { memory_bytes: mem_total, ..detected.profile };
    let (mut s, _) = settings(config, &profile);
    // The slots the engine will make (its default reads this machine's memory).
    s.parallel = u64::from(config.api.parallel());
    let unified = profile.memory == super::profiles::MemoryKind::Unified;
    let parts = estimate::parts(&model, &s, unified);
    // Reclaimable page cache (repacked matrices' file pages) is not memory that must be free.
    let needed_bytes = estimate::demand(&parts);
    tracing::info!(
        needed_mib = needed_bytes / (1024 * 1024),
        available_mib = available_bytes / (1024 * 1024),
        limit = %source_of_limit,
        "memory estimate"
    );
    if needed_bytes <= available_bytes {
        return Ok(());
    }
    let ceiling = if model.trained_context > 0 { model.trained_context } else { 1_048_576 };
    let max_context = estimate::max_context(&model, &s, unified, available_bytes, ceiling, false);
    Err(DoesNotFit { needed_bytes, available_bytes, source_of_limit, breakdown: lines(&parts), max_context })
}

fn lines(parts: &[Part]) -> String {
    parts.iter().map(|p| format!("  {:<15} {:>11}  {}\n", p.name, mib(p.bytes), p.detail)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use super::super::test_write as write;

    #[test]
    fn the_smallest_of_mem_available_and_the_cgroup_limits_wins() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(available(root), None);
        write(root, "proc/meminfo", "MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n");
        assert_eq!(available(root), Some((4_096_000_000, "MemAvailable".into())));
        write(root, "proc/self/cgroup", "0::/system.slice/outpost.service\n");
        write(root, "sys/fs/cgroup/system.slice/outpost.service/memory.max", "max\n");
        assert_eq!(available(root).unwrap().0, 4_096_000_000, "`max` is no limit");
        write(root, "sys/fs/cgroup/system.slice/memory.max", "1073741824\n");
        let (limit, from) = available(root).unwrap();
        assert_eq!(limit, 1 << 30);
        assert!(from.ends_with("system.slice/memory.max"), "{from}");
        write(root, "sys/fs/cgroup/system.slice/outpost.service/memory.max", "536870912\n");
        assert_eq!(available(root).unwrap().0, 1 << 29);
        // cgroup v1: `memory.limit_in_bytes` of the memory controller's hierarchy.
        write(root, "proc/self/cgroup", "4:memory:/docker/abc\n0::/\n");
        write(root, "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(available(root).unwrap().1, "MemAvailable", "no limit");
        write(root, "sys/fs/cgroup/memory/docker/memory.limit_in_bytes", "268435456\n");
        assert_eq!(available(root).unwrap().0, 1 << 28);
    }
}
