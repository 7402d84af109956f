//! The release manifest: a `signed` object and the `signatures` over its canonical bytes.
//!
//! Canonical bytes are `serde_json::to_vec` of [`Signed`]: a struct with a fixed field order, no
//! maps and no floats, so the same values always give the same bytes. A manifest is parsed into
//! the typed struct (unknown and duplicate fields rejected) and its signatures are checked over
//! the re-serialized bytes, so what is verified is exactly what is acted on.
//!
//! The runtime reads `signed.version` and `signed.target.sha256` from the `manifest.json` beside
//! the model it loads.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};

use crate::keys::key_id;

/// `signed.type` of every manifest this crate writes and accepts.
pub const MANIFEST_TYPE: &str = "outpost-model";
/// `signed.spec_version` written and accepted.
pub const SPEC_VERSION: u32 = 1;
/// The largest manifest file read.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// A manifest that could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading the file failed.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest {path} is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a manifest.
    #[error("manifest {path} is malformed: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// A release manifest as stored in `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// What the signatures cover.
    pub signed: Signed,
    /// Signatures over the canonical bytes of `signed`.
    pub signatures: Vec<Signature>,
}

/// The signed part of a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// Always [`MANIFEST_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Always [`SPEC_VERSION`].
    pub spec_version: u32,
    /// The release's semantic version.
    pub version: String,
    /// When the release was made (RFC 3339, UTC).
    pub created: String,
    /// After this time (RFC 3339, UTC) the manifest is refused.
    pub expires: String,
    /// Device classes this release is for.
    pub device_classes: Vec<String>,
    /// The model file the device ends up with.
    pub target: Target,
    /// Ways to obtain the target: the full file and deltas from known bases.
    pub artifacts: Vec<Artifact>,
}

/// The model file a release installs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Plain file name (informational; the store always names it `model.gguf`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// How an artifact turns into the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// The whole target, zstd-compressed.
    Full,
    /// A chunked delta (see [`crate::delta`]) from the base named by `base_sha256`.
    Delta,
}

/// One downloadable file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Full or delta.
    pub kind: ArtifactKind,
    /// Plain file name, also the URL relative to the manifest unless `url` is set.
    pub name: String,
    /// An absolute `http(s)://` URL, when the artifact is not beside the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// For deltas: the SHA-256 of the model the delta applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_sha256: Option<String>,
    /// For deltas: the size of that model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_size: Option<u64>,
}

/// One signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Id of the key that signed (see [`crate::keys::key_id`]).
    pub keyid: String,
    /// The ed25519 signature, lowercase hex of 64 bytes.
    pub sig: String,
}

impl Signed {
    /// The bytes signatures are made over.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serializing plain structs of strings, integers and vectors cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Manifest {
    /// Signs `signed` with every key given.
    pub fn sign(signed: Signed, keys: &[SigningKey]) -> Self {
        let bytes = signed.canonical_bytes();
        let signatures = keys
            .iter()
            .map(|k| Signature {
                keyid: key_id(&k.verifying_key()),
                sig: hex::encode(k.sign(&bytes).to_bytes()),
            })
            .collect();
        Self { signed, signatures }
    }

    /// The manifest as pretty JSON (what `manifest.json` holds).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses manifest bytes; `path` names the source in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, ManifestError> {
        serde_json::from_slice(bytes)
            .map_err(|source| ManifestError::Parse { path: path.to_path_buf(), source })
    }

    /// Reads and parses a manifest file (at most [`MAX_MANIFEST_BYTES`]); returns the manifest and
    /// the exact bytes read.
    pub fn read(path: &Path) -> Result<(Self, Vec<u8>), ManifestError> {
        use std::io::Read;
        let read_err = |source| ManifestError::Read { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { path: path.to_path_buf() });
        }
        let manifest = Self::parse(path, &bytes)?;
        Ok((manifest, bytes))
    }
}

/// RFC 3339 UTC with seconds, as manifests write times.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses an RFC 3339 UTC time as manifests write them.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Signed {
        Signed {
            kind: MANIFEST_TYPE.into(),
            spec_version: SPEC_VERSION,
            version: "1.0.0".into(),
            created: "2030-01-01T00:00:00Z".into(),
            expires: "2030-02-01T00:00:00Z".into(),
            device_classes: vec!["pi5-8g".into()],
            target: Target { name: "model.gguf".into(), size: 3, sha256: "00".repeat(32) },
            artifacts: vec![],
        }
    }

    #[test]
    fn canonical_bytes_survive_a_round_trip() {
        let m = Manifest::sign(sample(), &[SigningKey::from_bytes(&[7; 32])]);
        let parsed = Manifest::parse(Path::new("m"), &m.to_json()).unwrap();
        assert_eq!(parsed, m);
        assert_eq!(parsed.signed.canonical_bytes(), m.signed.canonical_bytes());
        let time = parse_time(&m.signed.created).unwrap();
        assert_eq!(format_time(time), m.signed.created);
    }

    #[test]
    fn unknown_and_duplicate_fields_are_refused() {
        let m = Manifest::sign(sample(), &[]);
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        v["signed"]["extra"] = 1.into();
        assert!(Manifest::parse(Path::new("m"), v.to_string().as_bytes()).is_err());
        let dup = String::from_utf8(m.to_json()).unwrap().replacen(
            "\"version\"",
            "\"version\": \"9.9.9\", \"version\"",
            1,
        );
        assert!(Manifest::parse(Path::new("m"), dup.as_bytes()).is_err());
    }
}
