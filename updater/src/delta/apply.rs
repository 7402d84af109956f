//! Applying a delta (device side): the old file is read by offset, the new one written in order.
//! Peak memory is one chunk's payload, its old region, its patch and its output (each at most
//! about [`MAX_CHUNK`]), whatever the model's size.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{invalid, Chunk, DeltaError, DeltaHeader, Op, MAGIC, MAX_CHUNK, MAX_HEADER};
use crate::io::{hash_stream, HashingWriter};

/// Largest payload accepted for one chunk (a bsdiff patch may exceed its output a little).
const MAX_PAYLOAD: u64 = 2 * MAX_CHUNK + (1 << 20);

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DeltaError + '_ {
    move |source| DeltaError::Io { path: path.to_path_buf(), source }
}

/// Checks every chunk's bounds before any byte is written.
fn check_chunks(h: &DeltaHeader, base_size: u64, payload_room: u64) -> Result<(), DeltaError> {
    let mut total_new: u64 = 0;
    let mut total_data: u64 = 0;
    for (i, c) in h.chunks.iter().enumerate() {
        let bad = |reason: &str| DeltaError::Chunk { index: i, reason: reason.to_owned() };
        total_new = total_new.checked_add(c.new_len).ok_or_else(|| bad("sizes overflow"))?;
        total_data = total_data.checked_add(c.data_len).ok_or_else(|| bad("sizes overflow"))?;
        let old_end = c.old_offset.checked_add(c.old_len).ok_or_else(|| bad("old range overflows"))?;
        match c.op {
            Op::Copy => {
                if c.old_len != c.new_len || c.data_len != 0 || old_end > base_size {
                    return Err(bad("copy range outside the old file"));
                }
            }
            Op::Bsdiff => {
                if c.old_len > MAX_CHUNK || old_end > base_size {
                    return Err(bad("patch region outside the old file or too large"));
                }
            }
            Op::Literal => {}
        }
        if c.op != Op::Copy && (c.new_len > MAX_CHUNK || c.data_len > MAX_PAYLOAD) {
            return Err(bad("chunk larger than the format allows"));
        }
    }
    if total_new != h.target_size {
        return Err(invalid(format!("chunks produce {total_new} bytes, the target is {}", h.target_size)));
    }
    if total_data != payload_room {
        return Err(invalid(format!("payloads are {total_data} bytes, the file holds {payload_room}")));
    }
    Ok(())
}

fn read_payload(r: &mut impl Read, c: &Chunk, index: usize, delta: &Path) -> Result<Vec<u8>, DeltaError> {
    let mut data = Vec::with_capacity(c.data_len as usize);
    r.take(c.data_len).read_to_end(&mut data).map_err(io_err(delta))?;
    if data.len() as u64 != c.data_len {
        return Err(DeltaError::Chunk { index, reason: "payload truncated".into() });
    }
    if crate::io::sha256_hex(&data) != c.data_sha256 {
        return Err(DeltaError::Chunk { index, reason: "payload sha256 mismatch".into() });
    }
    Ok(data)
}

/// Applies the delta at `delta` to `old`, writing `out` (created or truncated, fsynced).
/// `base_sha256` and the target size and hash come from the signed manifest: the delta's own
/// header must agree with them, the old file must hash to the base, and the output must hash
/// to the target.
pub fn apply(
    old: &Path,
    delta: &Path,
    out: &Path,
    base_sha256: &str,
    target_size: u64,
    target_sha256: &str,
) -> Result<(), DeltaError> {
    let delta_file = File::open(delta).map_err(io_err(delta))?;
    let delta_size = delta_file.metadata().map_err(io_err(delta))?.len();
    let mut r = BufReader::with_capacity(1 << 20, delta_file);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(io_err(delta))?;
    if &magic != MAGIC {
        return Err(invalid("bad magic"));
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(io_err(delta))?;
    let header_len = u32::from_le_bytes(len);
    if header_len > MAX_HEADER || u64::from(header_len) + 12 > delta_size {
        return Err(invalid(format!("header length {header_len} out of range")));
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header).map_err(io_err(delta))?;
    let h: DeltaHeader = serde_json::from_slice(&header).map_err(|e| invalid(e.to_string()))?;
    drop(header);
    if h.target_size != target_size || h.target_sha256 != target_sha256 {
        return Err(invalid("header target differs from the manifest's target"));
    }

    let old_file = File::open(old).map_err(io_err(old))?;
    let (old_size, old_sha) = hash_stream(&mut &old_file).map_err(io_err(old))?;
    if h.base_sha256 != base_sha256 || h.base_sha256 != old_sha || h.base_size != old_size {
        return Err(DeltaError::WrongBase {
            expected: h.base_sha256.clone(),
            expected_size: h.base_size,
            actual: old_sha,
            actual_size: old_size,
        });
    }
    check_chunks(&h, old_size, delta_size - 12 - u64::from(header_len))?;

    let out_file = File::create(out).map_err(io_err(out))?;
    let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 20, out_file));
    let mut block = vec![0u8; 1 << 20];
    for (index, c) in h.chunks.iter().enumerate() {
        let mut chunk_hash = Sha256::new();
        match c.op {
            Op::Copy => {
                let mut done = 0u64;
                while done < c.new_len {
                    let n = (c.new_len - done).min(block.len() as u64) as usize;
                    old_file.read_exact_at(&mut block[..n], c.old_offset + done).map_err(io_err(old))?;
                    chunk_hash.update(&block[..n]);
                    w.write_all(&block[..n]).map_err(io_err(out))?;
                    done += n as u64;
                }
            }
            Op::Literal | Op::Bsdiff => {
                let data = read_payload(&mut r, c, index, delta)?;
                let bad = |reason: String| DeltaError::Chunk { index, reason };
                let bytes = if c.op == Op::Literal {
                    zstd::bulk::decompress(&data, c.new_len as usize).map_err(|e| bad(e.to_string()))?
                } else {
                    let patch = zstd::bulk::decompress(&data, MAX_PAYLOAD as usize)
                        .map_err(|e| bad(e.to_string()))?;
                    drop(data);
                    let mut region = vec![0u8; c.old_len as usize];
                    old_file.read_exact_at(&mut region, c.old_offset).map_err(io_err(old))?;
                    let mut new = Vec::with_capacity(c.new_len as usize);
                    bsdiff::patch(&region, &mut patch.as_slice(), &mut new)
                        .map_err(|e| bad(e.to_string()))?;
                    new
                };
                if bytes.len() as u64 != c.new_len {
                    return Err(bad(format!("produced {} bytes, {} declared", bytes.len(), c.new_len)));
                }
                chunk_hash.update(&bytes);
                w.write_all(&bytes).map_err(io_err(out))?;
            }
        }
        if hex::encode(chunk_hash.finalize()) != c.new_sha256 {
            return Err(DeltaError::Chunk { index, reason: "output sha256 mismatch".into() });
        }
    }
    let (buffered, got_size, got) = w.finish();
    let file = buffered.into_inner().map_err(|e| io_err(out)(e.into_error()))?;
    file.sync_all().map_err(io_err(out))?;
    if got_size != target_size || got != target_sha256 {
        return Err(DeltaError::Output {
            got,
            got_size,
            want: target_sha256.to_owned(),
            want_size: target_size,
        });
    }
    Ok(())
}
