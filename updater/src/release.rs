//! Making a release (fleet backend side): the zstd full file, one delta per base when it pays,
//! and the signed manifest.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;

use crate::delta::{self, DeltaError};
use crate::io::hash_stream;
use crate::manifest::{
    format_time, Artifact, ArtifactKind, Manifest, Signed, Target, MANIFEST_TYPE, SPEC_VERSION,
};
use crate::verify::{self, VerifyError};

/// A delta is published only if it is at most this fraction of the compressed full file
/// (at least 30 % smaller).
pub const DELTA_MAX_RATIO: f64 = 0.7;

/// A release that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Reading or writing a file failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The version or device class is not acceptable.
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    /// Making a delta failed.
    #[error("cannot make delta from {base}: {source}")]
    Delta {
        /// The base model.
        base: PathBuf,
        /// Why.
        source: DeltaError,
    },
}

/// What to release.
#[derive(Debug)]
pub struct ReleaseOptions {
    /// Keys to sign with.
    pub keys: Vec<SigningKey>,
    /// The new model.
    pub model: PathBuf,
    /// Its version.
    pub version: String,
    /// Device classes it is for.
    pub device_classes: Vec<String>,
    /// Models boards may have now; one delta is tried for each.
    pub bases: Vec<PathBuf>,
    /// How long the manifest is valid.
    pub expires_in: Duration,
    /// Output directory (created).
    pub out: PathBuf,
    /// zstd level for the full file and delta payloads.
    pub zstd_level: i32,
}

/// What was written.
#[derive(Debug)]
pub struct ReleaseReport {
    /// The manifest.
    pub manifest: Manifest,
    /// Deltas made but not published (too large): base path, delta size, full size.
    pub skipped: Vec<(PathBuf, u64, u64)>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> ReleaseError + 'a {
    move |source| ReleaseError::Io { op, path: path.to_path_buf(), source }
}

fn hash_file(path: &Path) -> Result<(u64, String), ReleaseError> {
    let mut f = std::fs::File::open(path).map_err(io("open", path))?;
    hash_stream(&mut f).map_err(io("read", path))
}

/// Writes `out/manifest.json` and the artifacts.
pub fn release(opts: &ReleaseOptions, now: SystemTime) -> Result<ReleaseReport, ReleaseError> {
    verify::parse_version(&opts.version)?;
    for c in &opts.device_classes {
        if !verify::is_plain_name(c) {
            return Err(VerifyError::Field {
                field: "device_class".into(),
                value: c.clone(),
                reason: "not plain".into(),
            }
            .into());
        }
    }
    std::fs::create_dir_all(&opts.out).map_err(io("create", &opts.out))?;
    let (size, sha256) = hash_file(&opts.model)?;

    let full_name = format!("model-{}.gguf.zst", opts.version);
    let full_path = opts.out.join(&full_name);
    {
        let mut src = std::fs::File::open(&opts.model).map_err(io("open", &opts.model))?;
        let dst = std::fs::File::create(&full_path).map_err(io("create", &full_path))?;
        let mut enc =
            zstd::stream::write::Encoder::new(dst, opts.zstd_level).map_err(io("compress", &full_path))?;
        std::io::copy(&mut src, &mut enc).map_err(io("compress", &full_path))?;
        enc.finish().and_then(|f| f.sync_all()).map_err(io("write", &full_path))?;
    }
    let (full_size, full_sha) = hash_file(&full_path)?;
    let mut artifacts = vec![Artifact {
        kind: ArtifactKind::Full,
        name: full_name,
        url: None,
        size: full_size,
        sha256: full_sha,
        base_sha256: None,
        base_size: None,
    }];

    let mut skipped = Vec::new();
    for base in &opts.bases {
        let (base_size, base_sha) = hash_file(base)?;
        if base_sha == sha256 {
            continue;
        }
        let name = format!("delta-{}-to-{}.odelta", &base_sha[..16], opts.version);
        let path = opts.out.join(&name);
        let stats = delta::encode(base, &opts.model, &path, opts.zstd_level)
            .map_err(|source| ReleaseError::Delta { base: base.clone(), source })?;
        if stats.size as f64 > full_size as f64 * DELTA_MAX_RATIO {
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            skipped.push((base.clone(), stats.size, full_size));
            continue;
        }
        let (_, delta_sha) = hash_file(&path)?;
        artifacts.push(Artifact {
            kind: ArtifactKind::Delta,
            name,
            url: None,
            size: stats.size,
            sha256: delta_sha,
            base_sha256: Some(base_sha),
            base_size: Some(base_size),
        });
    }

    let signed = Signed {
        kind: MANIFEST_TYPE.into(),
        spec_version: SPEC_VERSION,
        version: opts.version.clone(),
        created: format_time(now),
        expires: format_time(now + opts.expires_in),
        device_classes: opts.device_classes.clone(),
        target: Target { name: "model.gguf".into(), size, sha256 },
        artifacts,
    };
    let manifest = Manifest::sign(signed, &opts.keys);
    let path = opts.out.join("manifest.json");
    crate::fsutil::write_atomic(&path, &manifest.to_json()).map_err(|e| ReleaseError::Io {
        op: "write",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    Ok(ReleaseReport { manifest, skipped })
}
