//! `outpost validate`: the estimate for a board, its verdict and the largest context that fits;
//! and the check `outpost serve` makes before it loads a model.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::estimate::{self, ModelFacts, Part, Settings};
use super::profiles::{self, Detected, MemoryKind, Profile};
use crate::config::{Config, FlashAttention};

/// A total at or below this share of the board's memory fits; above it, up to all of it, is
/// tight (the estimate's error and the OS's appetite are within that margin).
pub const FITS_SHARE: f64 = 0.9;

/// Exit code of `outpost validate` when the verdict is `fits`.
pub const EXIT_FITS: u8 = 0;
/// Exit code when the verdict is `tight` (between 90 % and 100 % of the board's memory).
pub const EXIT_TIGHT: u8 = 10;
/// Exit code when the verdict is `does-not-fit`.
pub const EXIT_DOES_NOT_FIT: u8 = 11;

/// The verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// At most 90 % of the board's memory.
    Fits,
    /// Between 90 % and 100 %.
    Tight,
    /// More than the board has.
    DoesNotFit,
}

impl Verdict {
    /// The exit code `outpost validate` ends with.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Fits => EXIT_FITS,
            Verdict::Tight => EXIT_TIGHT,
            Verdict::DoesNotFit => EXIT_DOES_NOT_FIT,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Fits => "within",
            Verdict::Tight => "tight against",
            Verdict::DoesNotFit => "beyond",
        }
    }
}

/// Why the estimate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// `--device` names no profile.
    #[error("unknown device `{name}`; known: auto, {known}")]
    UnknownDevice {
        /// The name given.
        name: String,
        /// The profiles' names.
        known: String,
    },
    /// The model's header could not be read.
    #[error(transparent)]
    Header(#[from] outpost_common::gguf::GgufError),
    /// The header lacks a dimension.
    #[error(transparent)]
    Facts(#[from] estimate::FactsError),
}

/// The estimate for one model, configuration and board.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The board.
    pub device: Profile,
    /// What `auto` saw, when it was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected: Option<Detected>,
    /// The model file.
    pub model_path: PathBuf,
    /// Its dimensions.
    pub model: ModelFacts,
    /// The configuration that matters.
    pub settings: Settings,
    /// The process's parts, then `os_reserve`.
    pub parts: Vec<Part>,
    /// The process's parts summed (what `outpost serve` will hold).
    pub process_bytes: u64,
    /// `process_bytes` plus the board's OS reserve.
    pub total_bytes: u64,
    /// Of `total_bytes`, clean page cache the kernel can reclaim (the file pages of repacked
    /// matrices): in the peak RSS, but not memory that must be free.
    pub reclaimable_bytes: u64,
    /// The board's memory.
    pub device_bytes: u64,
    /// The verdict.
    pub verdict: Verdict,
    /// The exit code for the verdict.
    pub exit_code: u8,
    /// The largest `model.context` (per slot, multiple of 256) whose total still `fits`, with
    /// the other settings unchanged; at most the trained context.
    pub max_context: u64,
    /// What limits `max_context`: `memory` or `trained-context`.
    pub max_context_limit: &'static str,
    /// Notes on settings that do not apply to the board.
    pub notes: Vec<String>,
}

/// The board for `--device` (`auto` detects it under `root`).
pub fn device(name: &str, root: &Path) -> Result<(Profile, Option<Detected>), ValidateError> {
    if name == "auto" {
        let detected = profiles::detect(root);
        return Ok((detected.profile.clone(), Some(detected)));
    }
    profiles::named(name).map(|p| (p, None)).ok_or_else(|| ValidateError::UnknownDevice {
        name: name.to_owned(),
        known: profiles::all().iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
    })
}

/// The estimate's settings from the configuration for `device` (the `api.parallel` default
/// depends on its memory), plus notes.
pub fn settings(config: &Config, device: &Profile) -> (Settings, Vec<String>) {
    let m = &config.model;
    let mut notes = Vec::new();
    let gpu_layers = match device.memory {
        MemoryKind::Unified => u64::from(m.gpu_layers),
        MemoryKind::CpuOnly => {
            if m.gpu_layers > 0 {
                notes.push(format!("model.gpu_layers = {} ignored: no GPU llama.cpp uses", m.gpu_layers));
            }
            0
        }
    };
    let flash_attention = match m.flash_attention() {
        FlashAttention::On => true,
        FlashAttention::Off => false,
        // llama.cpp turns it on where the backend supports it, which the CPU one does.
        FlashAttention::Auto => true,
    };
    let router_model_bytes = config.router.enabled.then(|| {
        let (dir, _) = crate::router::locate::router_dir(&config.router);
        std::fs::metadata(dir.join("router.onnx")).map(|md| md.len()).unwrap_or(0)
    });
    let settings = Settings {
        context: u64::from(m.context),
        parallel: u64::from(config.api.parallel_for_memory(device.memory_bytes)),
        batch: u64::from(m.batch),
        gpu_layers,
        flash_attention,
        router_model_bytes,
        cache_entries: config.cache.enabled.then_some(config.cache.max_entries),
        cpu: device.cpu,
    };
    (settings, notes)
}

/// Reads the model's facts.
pub fn facts(path: &Path) -> Result<ModelFacts, ValidateError> {
    let header = outpost_common::gguf::read_header(path)?;
    Ok(ModelFacts::from_header(&header, path)?)
}

/// The estimate for `model` (the file at `model_path`) under `config` on `device`.
pub fn report(
    config: &Config,
    model_path: &Path,
    model: ModelFacts,
    device: Profile,
    detected: Option<Detected>,
) -> Report {
    let (settings, notes) = settings(config, &device);
    let unified = device.memory == MemoryKind::Unified;
    let mut parts = estimate::parts(&model, &settings, unified);
    let process_bytes = estimate::sum(&parts);
    parts.push(Part {
        name: "os_reserve",
        bytes: device.os_reserve_bytes,
        detail: "firmware carve-outs, kernel and a headless userspace (assumed per board)".into(),
        reclaimable: false,
    });
    let total_bytes = process_bytes + device.os_reserve_bytes;
    let device_bytes = device.memory_bytes;
    let verdict = if total_bytes as f64 <= device_bytes as f64 * FITS_SHARE {
        Verdict::Fits
    } else if total_bytes <= device_bytes {
        Verdict::Tight
    } else {
        Verdict::DoesNotFit
    };
    let budget = ((device_bytes as f64 * FITS_SHARE) as u64).saturating_sub(device.os_reserve_bytes);
    let trained = if model.trained_context > 0 { model.trained_context } else { 1_048_576 };
    let max_context = estimate::max_context(&model, &settings, unified, budget, trained, true);
    let reclaimable_bytes = estimate::sum(&parts) - estimate::demand(&parts);
    let max_context_limit =
        if max_context + estimate::KV_PAD > trained { "trained-context" } else { "memory" };
    Report {
        device,
        detected,
        model_path: model_path.to_path_buf(),
        model,
        settings,
        parts,
        process_bytes,
        total_bytes,
        reclaimable_bytes,
        device_bytes,
        verdict,
        exit_code: verdict.exit_code(),
        max_context,
        max_context_limit,
        notes,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let d = &self.device;
        let memory = match d.memory {
            MemoryKind::Unified => "unified memory",
            MemoryKind::CpuOnly => "CPU only",
        };
        out += &format!("device   {} — {} ({}, {memory})\n", d.name, d.description, mib(d.memory_bytes));
        if let Some(det) = &self.detected {
            out += &format!(
                "         detected from model {:?}, MemTotal {}\n",
                det.model.as_deref().unwrap_or("(none)"),
                det.mem_total_bytes.map_or("(unknown)".into(), mib)
            );
        }
        let m = &self.model;
        let s = &self.settings;
        out += &format!(
            "model    {} ({}, {:.1}M parameters, {} layers)\n",
            self.model_path.display(),
            m.architecture,
            m.parameters as f64 / 1e6,
            m.layers
        );
        out += &format!(
            "config   context {} × {} slot(s), batch {}, gpu_layers {}, flash attention {}\n\n",
            s.context,
            s.parallel,
            s.batch,
            s.gpu_layers,
            if s.flash_attention { "on" } else { "off" }
        );
        out += &self.breakdown();
        out += &format!(
            "\nverdict  {} (exit {}); largest context that fits: {} tokens per slot{}\n",
            match self.verdict {
                Verdict::Fits => "fits",
                Verdict::Tight => "tight",
                Verdict::DoesNotFit => "does not fit",
            },
            self.exit_code,
            self.max_context,
            if self.max_context_limit == "trained-context" { " (the trained context)" } else { "" }
        );
        for note in &self.notes {
            out += &format!("note     {note}\n");
        }
        out
    }

    /// The parts and the total, one line each.
    pub fn breakdown(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            out += &format!("  {:<15} {:>11}  {}\n", p.name, mib(p.bytes), p.detail);
        }
        out += &format!(
            "  {:<15} {:>11}  of {} ({:.0} %){}\n",
            "total",
            mib(self.total_bytes),
            mib(self.device_bytes),
            100.0 * self.total_bytes as f64 / self.device_bytes.max(1) as f64,
            if self.reclaimable_bytes > 0 {
                format!("; {} of it reclaimable", mib(self.reclaimable_bytes))
            } else {
                String::new()
            }
        );
        out
    }
}

/// `outpost validate`: the report for `config` (its model, or `model` instead) on the board
/// named `device` (`auto`: detected under `root`).
pub fn for_config(
    config: &Config,
    model: Option<&Path>,
    device_name: &str,
    root: &Path,
) -> Result<Report, ValidateError> {
    let (profile, detected) = device(device_name, root)?;
    let path = model.unwrap_or(&config.model.path);
    Ok(report(config, path, facts(path)?, profile, detected))
}

/// `outpost validate`'s verdict when it is not `fits`: main turns it into the exit code.
#[derive(Debug, thiserror::Error)]
#[error("the estimate is {} the memory of {device} (exit {})", .verdict.text(), .verdict.exit_code())]
pub struct NotFits {
    /// The verdict.
    pub verdict: Verdict,
    /// The board's name.
    pub device: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::board::repack::CpuKind;

    fn facts() -> ModelFacts {
        ModelFacts {
            architecture: "llama".into(),
            parameters: 1_000_000,
            weights_bytes: 100 << 20,
            layer_bytes: vec![4 << 20; 24],
            output_bytes: 0,
            layers: 24,
            embedding: 896,
            heads: 14,
            kv_heads: 2,
            key_length: 64,
            value_length: 64,
            feed_forward: 4864,
            vocab: 151_936,
            merges: 0,
            trained_context: 32_768,
            matrices: Vec::new(),
        }
    }

    fn board(memory_bytes: u64) -> Profile {
        Profile {
            name: "test".into(),
            description: "test".into(),
            memory_bytes,
            os_reserve_bytes: 100 << 20,
            memory: MemoryKind::CpuOnly,
            cpu: CpuKind::Other,
        }
    }

    fn config(context: u32) -> Config {
        let mut c = Config::default();
        c.model.context = context;
        c.api.parallel = Some(1);
        c.router.enabled = false;
        c.cache.enabled = false;
        c
    }

    #[test]
    fn verdicts_exit_codes_and_max_context() {
        let c = config(2048);
        let total = report(&c, Path::new("m.gguf"), facts(), board(u64::MAX / 4), None).total_bytes;
        let at = |memory: u64| report(&c, Path::new("m.gguf"), facts(), board(memory), None);
        let fits = at(total * 2);
        assert_eq!((fits.verdict, fits.exit_code), (Verdict::Fits, 0));
        assert_eq!(fits.total_bytes, fits.process_bytes + (100 << 20));
        let tight = at(total * 20 / 19);
        assert_eq!((tight.verdict, tight.exit_code), (Verdict::Tight, 10));
        // Tight means the configured context is above the largest that fits.
        assert!(tight.max_context < 2048 && tight.max_context > 0, "{}", tight.max_context);
        let no = at(total - 1);
        assert_eq!((no.verdict, no.exit_code), (Verdict::DoesNotFit, 11));
        // With plenty of memory the trained context is the limit.
        let big = at(1 << 40);
        assert_eq!((big.max_context, big.max_context_limit), (32_768, "trained-context"));
        // The largest context that fits does fit.
        let c2 = config(u32::try_from(fits.max_context).unwrap());
        let again = report(&c2, Path::new("m.gguf"), facts(), board(total * 2), None);
        assert_eq!(again.verdict, Verdict::Fits);
    }

    #[test]
    fn gpu_layers_count_only_on_unified_memory_and_parallel_follows_the_board() {
        let mut c = config(1024);
        c.model.gpu_layers = 99;
        c.api.parallel = None;
        let board_of = |memory, gib: u64| Profile { memory, memory_bytes: gib << 30, ..board(0) };
        let (s, notes) = settings(&c, &board_of(MemoryKind::CpuOnly, 2));
        assert_eq!((s.gpu_layers, s.parallel), (0, 1));
        assert!(notes[0].contains("ignored"), "{notes:?}");
        let (s, notes) = settings(&c, &board_of(MemoryKind::Unified, 8));
        assert_eq!((s.gpu_layers, s.parallel), (99, 4));
        assert!(s.flash_attention, "auto with a GPU counts as flash attention");
        assert!(notes.is_empty());
        assert!(matches!(device("pi6-1gb", Path::new("/")), Err(ValidateError::UnknownDevice { .. })));
    }
}
