//! Bytes checked while they stream in (as tough's `DigestAdapter` does): a hard cap at the
//! declared size, and the size and SHA-256 compared at the end. Nothing is trusted before the
//! last byte has been hashed.

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

/// Why a stream of bytes was refused.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the source failed.
    #[error("cannot read {what}: {source}")]
    Read {
        /// What was being read.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing the destination failed.
    #[error("cannot write {what}: {source}")]
    Write {
        /// What was being written.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The source holds more bytes than declared.
    #[error("{what}: more than the {declared} bytes declared")]
    TooLong {
        /// What was being read.
        what: String,
        /// The declared size.
        declared: u64,
    },
    /// The source ended early.
    #[error("{what}: {got} bytes, {declared} declared")]
    TooShort {
        /// What was being read.
        what: String,
        /// Bytes seen.
        got: u64,
        /// The declared size.
        declared: u64,
    },
    /// The SHA-256 differs from the declared one.
    #[error("{what}: sha256 {got}, {declared} declared")]
    HashMismatch {
        /// What was being read.
        what: String,
        /// The hash of the bytes seen.
        got: String,
        /// The declared hash.
        declared: String,
    },
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Copies `reader` into `writer`, refusing more than `size` bytes, and checks the size and
/// SHA-256 at the end. `what` names the stream in errors.
pub fn copy_verified(
    reader: &mut impl Read,
    writer: &mut impl Write,
    size: u64,
    sha256: &str,
    what: &str,
) -> Result<(), StreamError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut seen: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(StreamError::Read { what: what.to_owned(), source }),
        };
        seen += n as u64;
        if seen > size {
            return Err(StreamError::TooLong { what: what.to_owned(), declared: size });
        }
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n]).map_err(|source| StreamError::Write { what: what.to_owned(), source })?;
    }
    if seen < size {
        return Err(StreamError::TooShort { what: what.to_owned(), got: seen, declared: size });
    }
    let got = hex::encode(hasher.finalize());
    if !got.eq_ignore_ascii_case(sha256) {
        return Err(StreamError::HashMismatch { what: what.to_owned(), got, declared: sha256.to_owned() });
    }
    Ok(())
}

/// Hashes a whole stream: (size, lowercase hex SHA-256).
pub fn hash_stream(reader: &mut impl Read) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The inner writer and the (size, hex SHA-256) of everything written.
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.written, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn copy_verified_checks_cap_size_and_hash() {
        let data = b"hello world".to_vec();
        let sha = sha256_hex(&data);
        let mut out = Vec::new();
        copy_verified(&mut &data[..], &mut out, 11, &sha, "x").unwrap();
        assert_eq!(out, data);
        let err = copy_verified(&mut &data[..], &mut Vec::new(), 10, &sha, "x").unwrap_err();
        assert!(matches!(err, StreamError::TooLong { declared: 10, .. }), "{err}");
        let err = copy_verified(&mut &data[..], &mut Vec::new(), 12, &sha, "x").unwrap_err();
        assert!(matches!(err, StreamError::TooShort { got: 11, .. }), "{err}");
        let mut flipped = data.clone();
        flipped[0] ^= 1;
        let err = copy_verified(&mut &flipped[..], &mut Vec::new(), 11, &sha, "x").unwrap_err();
        assert!(matches!(err, StreamError::HashMismatch { .. }), "{err}");
    }
}
