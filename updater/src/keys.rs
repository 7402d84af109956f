//! Release keys (ed25519).
//!
//! File format: one line of lowercase hex, the raw 32 bytes of the key, then a newline.
//! `release.key` holds the secret seed (mode 0600), `release.pub` the public key. A key's id is
//! the lowercase hex SHA-256 of its 32 public-key bytes; signatures name the id they were made
//! with, and verification recomputes ids from the trusted keys, never trusting the claim alone.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The secret key file `keygen` writes.
pub const SECRET_FILE: &str = "release.key";
/// The public key file `keygen` writes.
pub const PUBLIC_FILE: &str = "release.pub";

/// A key that could not be made, read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading a key file failed.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file does not hold 64 hex digits (or is not a valid ed25519 point).
    #[error("key file {path} is not a hex-encoded 32-byte ed25519 key: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing a key file failed (it must not exist yet).
    #[error("cannot write key file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The id of a public key: lowercase hex SHA-256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Writes a new key pair into `dir` (`release.key` mode 0600, `release.pub` 0644); refuses to
/// overwrite existing files. Returns the new key's id.
pub fn keygen(dir: &Path) -> Result<String, KeyError> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let signing = SigningKey::from_bytes(&seed);
    let public = signing.verifying_key();
    write_new(&dir.join(SECRET_FILE), &hex::encode(seed), 0o600)?;
    write_new(&dir.join(PUBLIC_FILE), &hex::encode(public.as_bytes()), 0o644)?;
    Ok(key_id(&public))
}

fn write_new(path: &Path, hex_text: &str, mode: u32) -> Result<(), KeyError> {
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
        f.write_all(format!("{hex_text}\n").as_bytes())?;
        f.sync_all()
    };
    write().map_err(|source| KeyError::Write { path: path.to_path_buf(), source })
}

fn read_32(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
    let parse_err = |reason: String| KeyError::Parse { path: path.to_path_buf(), reason };
    let bytes = hex::decode(text.trim()).map_err(|e| parse_err(e.to_string()))?;
    bytes.try_into().map_err(|b: Vec<u8>| parse_err(format!("{} bytes", b.len())))
}

/// Reads a secret key file written by [`keygen`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&read_32(path)?))
}

/// Reads a public key file written by [`keygen`].
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes = read_32(path)?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|e| KeyError::Parse { path: path.to_path_buf(), reason: e.to_string() })?;
    if key.is_weak() {
        return Err(KeyError::Parse { path: path.to_path_buf(), reason: "weak (small-order) key".into() });
    }
    Ok(key)
}

/// The trusted public keys, by key id: the same key listed twice counts once.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    by_id: BTreeMap<String, VerifyingKey>,
}

impl TrustedKeys {
    /// Adds a key (a duplicate is ignored).
    pub fn insert(&mut self, key: VerifyingKey) {
        self.by_id.insert(key_id(&key), key);
    }

    /// The key with this id, if trusted.
    pub fn get(&self, id: &str) -> Option<&VerifyingKey> {
        self.by_id.get(id)
    }

    /// Distinct trusted keys.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keygen_round_trips_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let id = keygen(dir.path()).unwrap();
        let sk = read_signing_key(&dir.path().join(SECRET_FILE)).unwrap();
        let pk = read_public_key(&dir.path().join(PUBLIC_FILE)).unwrap();
        assert_eq!(sk.verifying_key(), pk);
        assert_eq!(key_id(&pk), id);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(keygen(dir.path()), Err(KeyError::Write { .. })));
    }

    #[test]
    fn garbage_key_is_a_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pub");
        std::fs::write(&p, "abcd\n").unwrap();
        assert!(matches!(read_public_key(&p), Err(KeyError::Parse { .. })));
    }
}
