//! The chunked delta format: the device never holds a whole model in memory.
//!
//! File layout: [`MAGIC`] (8 bytes), header length (`u32` LE), the header ([`DeltaHeader`] as
//! JSON, at most [`MAX_HEADER`] bytes), then each chunk's payload in chunk order.
//!
//! The new file is cut into chunks on GGUF tensor boundaries (header region, then one range per
//! tensor, each split into pieces of at most [`MAX_CHUNK`] bytes); a file that is not GGUF is cut
//! into fixed [`MAX_CHUNK`] pieces. Each chunk is one of:
//! - `copy`: `new_len` bytes from the old file at `old_offset` (no payload);
//! - `bsdiff`: a zstd-compressed bsdiff patch against the old region `old_offset..+old_len`;
//! - `literal`: the zstd-compressed new bytes.
//!
//! Each payload carries its size and SHA-256, and each chunk the SHA-256 of the bytes it
//! produces; the whole output is checked against the target's size and hash. Applying reads the
//! old file by offset (`pread`) and writes the new one in order; peak memory is a few chunks.

mod apply;
mod encode;

pub use apply::apply;
pub use encode::{encode, EncodeStats};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// First bytes of a delta file.
pub const MAGIC: &[u8; 8] = b"OPDELTA1";
/// Largest header accepted.
pub const MAX_HEADER: u32 = 64 * 1024 * 1024;
/// Largest chunk of new bytes produced by a patch or literal (and largest old region read).
pub const MAX_CHUNK: u64 = 16 * 1024 * 1024;

/// What a chunk does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Bytes from the old file.
    Copy,
    /// A bsdiff patch against an old region.
    Bsdiff,
    /// New bytes.
    Literal,
}

/// One chunk of the new file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// What it does.
    pub op: Op,
    /// Bytes it produces.
    pub new_len: u64,
    /// SHA-256 of the bytes it produces.
    pub new_sha256: String,
    /// Old region start (copy, bsdiff).
    pub old_offset: u64,
    /// Old region length (bsdiff; equals `new_len` for copy).
    pub old_len: u64,
    /// Payload bytes in the file (0 for copy).
    pub data_len: u64,
    /// SHA-256 of the payload (empty for copy).
    pub data_sha256: String,
}

/// The delta's header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaHeader {
    /// Size of the file the delta applies to.
    pub base_size: u64,
    /// SHA-256 of that file.
    pub base_sha256: String,
    /// Size of the file it produces.
    pub target_size: u64,
    /// SHA-256 of that file.
    pub target_sha256: String,
    /// The chunks, in new-file order.
    pub chunks: Vec<Chunk>,
}

/// A delta that could not be made or applied.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// Reading or writing a file failed.
    #[error("delta I/O on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The delta is malformed or inconsistent.
    #[error("delta is invalid: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// The old file is not the delta's base.
    #[error("delta is for base sha256 {expected} ({expected_size} bytes), the current model is {actual} ({actual_size} bytes)")]
    WrongBase {
        /// The base the delta names.
        expected: String,
        /// Its size.
        expected_size: u64,
        /// The actual old file's hash.
        actual: String,
        /// Its size.
        actual_size: u64,
    },
    /// A chunk's payload or output does not match its hash.
    #[error("delta chunk {index}: {reason}")]
    Chunk {
        /// The chunk.
        index: usize,
        /// What did not match.
        reason: String,
    },
    /// The output does not match the target.
    #[error("delta output is {got_size} bytes sha256 {got}, the target is {want_size} bytes sha256 {want}")]
    Output {
        /// Output hash.
        got: String,
        /// Output size.
        got_size: u64,
        /// Target hash.
        want: String,
        /// Target size.
        want_size: u64,
    },
}

fn invalid(reason: impl Into<String>) -> DeltaError {
    DeltaError::Invalid { reason: reason.into() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
