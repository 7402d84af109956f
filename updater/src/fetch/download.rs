//! Resumable downloads into the store (as tough's `io.rs` reads: capped, hashed while streaming).
//!
//! The file grows as `<dir>/<sha256>.part`. A later attempt, or a later run after a crash or a
//! SIGTERM, re-hashes what is there and asks for the rest with `Range: bytes=N-`. The answer
//! must be `206` with `Content-Range: bytes N-(size-1)/size`; a `200` means the server ignored
//! the range, and the file starts over from its first byte; any other `Content-Range` drops the
//! partial file and the next attempt asks for the whole file. Never more than the declared size
//! is written: a server announcing or sending more is cut off and the file removed. The finished
//! file must hash to the declared SHA-256; if part of it came from an earlier attempt and it does
//! not, it is fetched once more from the start before the download is refused.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{Client, FetchError};

/// One artifact to download.
#[derive(Clone, Copy, Debug)]
pub struct Download<'a> {
    /// Where from.
    pub url: &'a str,
    /// Its declared size (from the signed manifest).
    pub size: u64,
    /// Its declared SHA-256 (lowercase hex, from the signed manifest).
    pub sha256: &'a str,
}

/// How far a download is, for status lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes on disk.
    pub done: u64,
    /// Bytes declared.
    pub total: u64,
}

/// What [`download`] left: the verified file, and how much of it this call transferred.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downloaded {
    /// The complete, verified file.
    pub path: PathBuf,
    /// Bytes already on disk from an earlier run when this call started.
    pub resumed_from: u64,
    /// Attempts (requests) this call made.
    pub attempts: u32,
}

fn file_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> FetchError + 'a {
    move |source| FetchError::File { op, path: path.to_path_buf(), source }
}

/// Downloads `d` into `dir` (created when the first byte arrives), resuming a partial file left
/// there by an earlier attempt, with the client's retries. Other files in `dir` (partial
/// downloads of releases no longer offered) are removed first. Returns the verified file.
pub fn download(
    client: &Client,
    d: Download<'_>,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Downloaded, FetchError> {
    let name = format!("{}.part", d.sha256);
    remove_others(dir, &name)?;
    let part = dir.join(&name);
    let resumed_from = std::fs::metadata(&part).map_or(0, |m| m.len().min(d.size));
    if resumed_from > 0 {
        tracing::info!(url = d.url, bytes = resumed_from, "resuming a partial download");
    }
    let mut attempts = 0;
    let result = client.with_retries("downloading", || {
        attempts += 1;
        attempt(client, d, dir, &part, progress)
    });
    if result.is_err() {
        // An empty file is no progress; leave the store as it was.
        if std::fs::metadata(&part).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(&part);
        }
        remove_dir_if_empty(dir);
    }
    result.map(|()| Downloaded { path: part, resumed_from, attempts })
}

/// Removes `dir` if it is empty (after the download was moved away or given up).
pub fn remove_dir_if_empty(dir: &Path) {
    if std::fs::remove_dir(dir).is_ok() {
        if let Some(parent) = dir.parent() {
            let _ = crate::fsutil::fsync_dir(parent);
        }
    }
}

fn remove_others(dir: &Path, keep: &str) -> Result<(), FetchError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        if entry.file_name().to_str() != Some(keep) {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing a download no longer offered");
            std::fs::remove_file(&path).map_err(file_err("remove", &path))?;
        }
    }
    Ok(())
}

/// Hashes the first `len` bytes of `path`.
fn hash_prefix(path: &Path, len: u64) -> Result<Sha256, FetchError> {
    let mut hasher = Sha256::new();
    let file = File::open(path).map_err(file_err("open", path))?;
    let mut r = file.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(file_err("read", path))?;
        if n == 0 {
            return Ok(hasher);
        }
        hasher.update(&buf[..n]);
    }
}

/// Parses `bytes FIRST-LAST/TOTAL`.
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// One request: resumes from the bytes on disk, appends what arrives, checks the hash at the end.
fn attempt(
    client: &Client,
    d: Download<'_>,
    dir: &Path,
    part: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), FetchError> {
    let url = d.url.to_owned();
    let mut have = std::fs::metadata(part).map_or(0, |m| m.len());
    if have > d.size {
        std::fs::remove_file(part).map_err(file_err("remove", part))?;
        have = 0;
    }
    let resumed = have > 0;
    let mut hasher = if resumed { hash_prefix(part, have)? } else { Sha256::new() };
    if have < d.size {
        let resp = client.get(d.url, resumed.then_some(have))?;
        match resp.status().as_u16() {
            206 => {
                let value = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if parse_content_range(&value) != Some((have, d.size.saturating_sub(1), d.size)) {
                    if resumed {
                        std::fs::remove_file(part).map_err(file_err("remove", part))?;
                    }
                    return Err(FetchError::ContentRange { url, value, requested: have, size: d.size });
                }
            }
            200 if resumed => {
                tracing::warn!(url = d.url, "the server ignored the Range request; starting over");
                have = 0;
                hasher = Sha256::new();
            }
            200 => {}
            status => return Err(FetchError::Status { url, status }),
        }
        let expected = d.size - have;
        match resp.body().content_length() {
            Some(n) if n > expected => return Err(FetchError::TooLong { url, declared: d.size }),
            Some(n) if n < expected => return Err(FetchError::Length { url, offered: n, expected }),
            _ => {}
        }
        std::fs::create_dir_all(dir).map_err(file_err("create", dir))?;
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(part)
            .map_err(file_err("open", part))?;
        file.set_len(have).map_err(file_err("truncate", part))?;
        file.seek(SeekFrom::Start(have)).map_err(file_err("seek", part))?;
        let body = resp.into_body().into_reader();
        let mut sink = Sink { file, path: part, hasher, have };
        let streamed = stream(client, body, &mut sink, d, progress);
        let Sink { mut file, hasher: h, have: n, .. } = sink;
        (hasher, have) = (h, n);
        let flushed = file.flush().and_then(|()| file.sync_data()).map_err(file_err("write", part));
        if let Err(err) = streamed {
            if matches!(err, FetchError::TooLong { .. }) {
                drop(file);
                std::fs::remove_file(part).map_err(file_err("remove", part))?;
            }
            return Err(err);
        }
        flushed?;
        if have < d.size {
            return Err(FetchError::Truncated { url, got: have, expected: d.size });
        }
    }
    let got = hex::encode(hasher.finalize());
    if got != d.sha256 {
        std::fs::remove_file(part).map_err(file_err("remove", part))?;
        return Err(FetchError::Hash { url, got, declared: d.sha256.to_owned(), resumed });
    }
    Ok(())
}

/// The partial file being appended to, with the hash and length of all its bytes.
struct Sink<'a> {
    file: File,
    path: &'a Path,
    hasher: Sha256,
    have: u64,
}

/// Copies the body into the file, never past the declared size, enforcing `min_rate` over each
/// `read_timeout` window (ureq enforces `read_timeout` on each read) and the stop flag.
fn stream(
    client: &Client,
    mut body: impl Read,
    sink: &mut Sink<'_>,
    d: Download<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), FetchError> {
    let url = || d.url.to_owned();
    let opts = client.options();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
    loop {
        if client.cancelled() {
            return Err(FetchError::Cancelled);
        }
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(FetchError::Body { url: url(), got, source }),
        };
        if sink.have + n as u64 > d.size {
            return Err(FetchError::TooLong { url: url(), declared: d.size });
        }
        sink.file.write_all(&buf[..n]).map_err(file_err("write", sink.path))?;
        sink.hasher.update(&buf[..n]);
        sink.have += n as u64;
        got += n as u64;
        window_bytes += n as u64;
        progress(Progress { done: sink.have, total: d.size });
        let elapsed = window_start.elapsed();
        if elapsed >= opts.read_timeout {
            let rate = (window_bytes as f64 / elapsed.as_secs_f64()) as u64;
            if rate < opts.min_rate && sink.have < d.size {
                return Err(FetchError::TooSlow {
                    url: url(),
                    rate,
                    window: opts.read_timeout,
                    min_rate: opts.min_rate,
                });
            }
            (window_start, window_bytes) = (Instant::now(), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, 199, 200)));
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 0, 1)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
