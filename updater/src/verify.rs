//! The security rules a manifest must pass before anything on disk changes.
//!
//! - Signatures: at least `threshold` DISTINCT trusted keys, each id recomputed from the trusted
//!   key itself; a signature from an unknown key counts for nothing, a key that signs twice
//!   counts once.
//! - Version: valid semver, short, with every numeric part below [`MAX_VERSION_PART`] (an absurd
//!   version would lock a board out of all later releases).
//! - No downgrade below the highest committed version; the same version is accepted again only
//!   with the same target hash.
//! - Expiry against `max(now, latest known time)`, the latest known time being persisted, so a
//!   clock stepped backwards cannot reopen an expired manifest. A commit moves it to a manifest's
//!   `created` only up to the board's clock plus [`crate::update::MAX_CREATED_SKEW`], so a
//!   far-future `created` cannot make later manifests look expired; a future `created` is not
//!   itself refused (a board's clock may be behind).
//! - The board's device class must be listed; target and artifact names must be plain file names.

use std::collections::BTreeSet;
use std::time::SystemTime;

use ed25519_dalek::Signature as EdSignature;
use semver::Version;

use crate::keys::TrustedKeys;
use crate::manifest::{format_time, parse_time, ArtifactKind, Manifest, MANIFEST_TYPE, SPEC_VERSION};

/// Every numeric part of an accepted version is below this.
pub const MAX_VERSION_PART: u64 = 1_000_000;

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Too few distinct trusted keys signed.
    #[error("signatures from {valid} distinct trusted key(s), {required} required")]
    Threshold {
        /// Distinct trusted keys with a valid signature.
        valid: usize,
        /// The configured threshold.
        required: usize,
    },
    /// Not a manifest of a type and spec version this updater knows.
    #[error("unsupported manifest type {kind:?} spec_version {spec_version}")]
    Unsupported {
        /// `signed.type`.
        kind: String,
        /// `signed.spec_version`.
        spec_version: u32,
    },
    /// The version is not acceptable semver.
    #[error("version {version:?} is refused: {reason}")]
    Version {
        /// The version as written.
        version: String,
        /// Why.
        reason: String,
    },
    /// A time field is malformed or inconsistent.
    #[error("manifest times are invalid: {reason}")]
    Times {
        /// Why.
        reason: String,
    },
    /// The manifest expired (against the clock or the persisted latest known time).
    #[error("manifest expired at {expires} (reference time {reference})")]
    Expired {
        /// `signed.expires`.
        expires: String,
        /// The later of now and the latest known time.
        reference: String,
    },
    /// The version is below the highest committed one.
    #[error("version {version} is older than the highest committed version {highest}")]
    Downgrade {
        /// The manifest's version.
        version: String,
        /// The highest committed version.
        highest: String,
    },
    /// The same version as the highest committed one, but with another target.
    #[error("version {version} was committed with sha256 {committed}, this manifest names {offered}")]
    SameVersionOtherTarget {
        /// The version.
        version: String,
        /// The committed target hash.
        committed: String,
        /// The manifest's target hash.
        offered: String,
    },
    /// This board's class is not listed.
    #[error("manifest is for device classes {listed:?}, this board is {class:?}")]
    DeviceClass {
        /// The board's class.
        class: String,
        /// The manifest's classes.
        listed: Vec<String>,
    },
    /// A name is not a plain file name, or a field is malformed.
    #[error("manifest field {field} = {value:?} is refused: {reason}")]
    Field {
        /// Which field.
        field: String,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
}

/// What the board remembers between updates, for the rollback and freeze checks.
#[derive(Clone, Debug, Default)]
pub struct TrustState {
    /// The latest time the board has seen (clock or verified manifest creation time).
    pub latest_known_time: Option<SystemTime>,
    /// The highest committed version and its target hash.
    pub highest_committed: Option<(Version, String)>,
}

/// The board's rules.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    /// Keys whose signatures count.
    pub keys: &'a TrustedKeys,
    /// Distinct keys required.
    pub threshold: usize,
    /// This board's class.
    pub device_class: &'a str,
}

/// A manifest that passed every rule.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The parsed version.
    pub version: Version,
    /// `signed.created`.
    pub created: SystemTime,
}

/// Whether `name` is a plain file name: `[A-Za-z0-9._+-]`, 1..=255 bytes, not starting with a dot.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn field_err(field: &str, value: &str, reason: &str) -> VerifyError {
    VerifyError::Field { field: field.into(), value: value.into(), reason: reason.into() }
}

/// Parses and bounds a version string.
pub fn parse_version(s: &str) -> Result<Version, VerifyError> {
    let err = |reason: String| VerifyError::Version { version: s.to_owned(), reason };
    if s.len() > 64 {
        return Err(err("longer than 64 bytes".into()));
    }
    let v = Version::parse(s).map_err(|e| err(e.to_string()))?;
    if v.major >= MAX_VERSION_PART || v.minor >= MAX_VERSION_PART || v.patch >= MAX_VERSION_PART {
        return Err(err(format!("a numeric part is {MAX_VERSION_PART} or more")));
    }
    Ok(v)
}

/// Applies every rule; `now` is the board's clock.
pub fn verify(
    manifest: &Manifest,
    policy: Policy<'_>,
    trust: &TrustState,
    now: SystemTime,
) -> Result<Verified, VerifyError> {
    let s = &manifest.signed;
    // Signatures first: nothing else in an unsigned manifest deserves attention.
    let bytes = s.canonical_bytes();
    let mut valid = BTreeSet::new();
    for sig in &manifest.signatures {
        let Some(key) = policy.keys.get(&sig.keyid) else { continue };
        let Ok(raw) = hex::decode(&sig.sig) else { continue };
        let Ok(raw) = <[u8; 64]>::try_from(raw.as_slice()) else { continue };
        if key.verify_strict(&bytes, &EdSignature::from_bytes(&raw)).is_ok() {
            valid.insert(sig.keyid.as_str());
        }
    }
    if valid.len() < policy.threshold {
        return Err(VerifyError::Threshold { valid: valid.len(), required: policy.threshold });
    }
    if s.kind != MANIFEST_TYPE || s.spec_version != SPEC_VERSION {
        return Err(VerifyError::Unsupported { kind: s.kind.clone(), spec_version: s.spec_version });
    }
    let version = parse_version(&s.version)?;

    let created = parse_time(&s.created)
        .ok_or_else(|| VerifyError::Times { reason: format!("created {:?} is not RFC 3339", s.created) })?;
    let expires = parse_time(&s.expires)
        .ok_or_else(|| VerifyError::Times { reason: format!("expires {:?} is not RFC 3339", s.expires) })?;
    if expires <= created {
        return Err(VerifyError::Times { reason: "expires is not after created".into() });
    }
    let reference = trust.latest_known_time.map_or(now, |t| t.max(now));
    if expires <= reference {
        return Err(VerifyError::Expired { expires: s.expires.clone(), reference: format_time(reference) });
    }

    if let Some((highest, sha)) = &trust.highest_committed {
        if version < *highest {
            return Err(VerifyError::Downgrade { version: s.version.clone(), highest: highest.to_string() });
        }
        if version == *highest && !sha.eq_ignore_ascii_case(&s.target.sha256) {
            return Err(VerifyError::SameVersionOtherTarget {
                version: s.version.clone(),
                committed: sha.clone(),
                offered: s.target.sha256.clone(),
            });
        }
    }

    if !s.device_classes.iter().any(|c| c == policy.device_class) {
        return Err(VerifyError::DeviceClass {
            class: policy.device_class.to_owned(),
            listed: s.device_classes.clone(),
        });
    }

    if !is_plain_name(&s.target.name) {
        return Err(field_err("target.name", &s.target.name, "not a plain file name"));
    }
    if !is_sha256_hex(&s.target.sha256) {
        return Err(field_err("target.sha256", &s.target.sha256, "not 64 lowercase hex digits"));
    }
    for (i, a) in s.artifacts.iter().enumerate() {
        if !is_plain_name(&a.name) {
            return Err(field_err(&format!("artifacts[{i}].name"), &a.name, "not a plain file name"));
        }
        if let Some(url) = &a.url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(field_err(&format!("artifacts[{i}].url"), url, "not an absolute http(s) URL"));
            }
        }
        if !is_sha256_hex(&a.sha256) {
            return Err(field_err(
                &format!("artifacts[{i}].sha256"),
                &a.sha256,
                "not 64 lowercase hex digits",
            ));
        }
        match (a.kind, &a.base_sha256) {
            (ArtifactKind::Delta, Some(b)) if is_sha256_hex(b) => {}
            (ArtifactKind::Delta, _) => {
                return Err(field_err(
                    &format!("artifacts[{i}].base_sha256"),
                    "",
                    "a delta needs its base hash",
                ))
            }
            (ArtifactKind::Full, _) => {}
        }
    }
    Ok(Verified { version, created })
}
