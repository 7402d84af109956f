//! Making a delta (release side). Memory: one new piece, one old piece and their patch.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Chunk, DeltaError, DeltaHeader, Op, MAGIC, MAX_CHUNK};
use crate::gguf;
use crate::io::hash_stream;

/// What [`encode`] produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Chunks copied from the old file.
    pub copies: usize,
    /// Chunks patched with bsdiff.
    pub patches: usize,
    /// Chunks sent as literal bytes.
    pub literals: usize,
    /// Whether the new file was cut on GGUF tensor boundaries.
    pub gguf: bool,
    /// Size of the delta file.
    pub size: u64,
}

/// A range of a file with the key it is matched by in the other file.
#[derive(Clone, Debug)]
struct Piece {
    key: (String, u64),
    offset: u64,
    len: u64,
}

/// Cuts a file into pieces: GGUF header and tensors (split at [`MAX_CHUNK`]), else fixed pieces.
fn plan(path: &Path, size: u64) -> (Vec<Piece>, bool) {
    let mut pieces = Vec::new();
    let mut push = |name: &str, offset: u64, len: u64| {
        let mut i = 0;
        while i * MAX_CHUNK < len {
            let off = i * MAX_CHUNK;
            pieces.push(Piece {
                key: (name.to_owned(), i),
                offset: offset + off,
                len: (len - off).min(MAX_CHUNK),
            });
            i += 1;
        }
    };
    match gguf::layout(path) {
        Some(layout) => {
            push("\0header", 0, layout.data_start);
            for t in &layout.tensors {
                push(&t.name, t.offset, t.len);
            }
            (pieces, true)
        }
        None => {
            push("\0fixed", 0, size);
            (pieces, false)
        }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DeltaError + '_ {
    move |source| DeltaError::Io { path: path.to_path_buf(), source }
}

fn read_at(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, DeltaError> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| super::invalid("piece too large"))?];
    file.read_exact_at(&mut buf, offset).map_err(io_err(path))?;
    Ok(buf)
}

/// Whether bsdiff is worth trying: for tensor pieces of equal length, at least 5 % of sampled
/// positions must hold the same byte (fully rewritten random weights never patch well, and
/// suffix-sorting them is the slow part of making a delta).
fn worth_patching(key: &str, old: &[u8], new: &[u8]) -> bool {
    if key.starts_with('\0') || old.len() != new.len() || new.is_empty() {
        return true;
    }
    // An odd stride: a power-of-two one would alias with the structure of quantized blocks or
    // with edits at regular offsets, and see only changed (or only unchanged) bytes.
    let step = (new.len() / 4096).max(1) | 1;
    let (mut same, mut total) = (0usize, 0usize);
    for i in (0..new.len()).step_by(step) {
        total += 1;
        same += usize::from(old[i] == new[i]);
    }
    same * 20 >= total
}

/// Writes a delta turning `old` into `new` at `out`, zstd level `level`.
pub fn encode(old: &Path, new: &Path, out: &Path, level: i32) -> Result<EncodeStats, DeltaError> {
    let old_file = File::open(old).map_err(io_err(old))?;
    let new_file = File::open(new).map_err(io_err(new))?;
    let (base_size, base_sha256) = hash_stream(&mut &old_file).map_err(io_err(old))?;
    let (target_size, target_sha256) = hash_stream(&mut &new_file).map_err(io_err(new))?;

    let (old_plan, _) = plan(old, base_size);
    let (new_plan, is_gguf) = plan(new, target_size);
    let mut by_key: HashMap<(String, u64), (u64, u64)> = HashMap::new();
    let mut by_hash: HashMap<[u8; 32], (u64, u64)> = HashMap::new();
    for p in &old_plan {
        let bytes = read_at(&old_file, old, p.offset, p.len)?;
        by_hash.entry(Sha256::digest(&bytes).into()).or_insert((p.offset, p.len));
        by_key.insert(p.key.clone(), (p.offset, p.len));
    }

    let payload_path = out.with_extension("payload.tmp");
    let mut payloads = BufWriter::new(File::create(&payload_path).map_err(io_err(&payload_path))?);
    let mut chunks = Vec::with_capacity(new_plan.len());
    let mut stats = EncodeStats { gguf: is_gguf, ..EncodeStats::default() };
    for p in &new_plan {
        let bytes = read_at(&new_file, new, p.offset, p.len)?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let new_sha256 = hex::encode(digest);
        if let Some(&(old_offset, len)) = by_hash.get(&digest).filter(|(_, len)| *len == p.len) {
            stats.copies += 1;
            chunks.push(Chunk {
                op: Op::Copy,
                new_len: p.len,
                new_sha256,
                old_offset,
                old_len: len,
                data_len: 0,
                data_sha256: String::new(),
            });
            continue;
        }
        // The old region to patch against: same tensor piece, else the same offsets.
        let region = by_key
            .get(&p.key)
            .copied()
            .or_else(|| (p.offset < base_size).then(|| (p.offset, p.len.min(base_size - p.offset))));
        let literal = zstd::bulk::compress(&bytes, level).map_err(io_err(new))?;
        let mut choice = (Op::Literal, literal, 0, 0);
        if let Some((old_offset, old_len)) = region {
            let old_bytes = read_at(&old_file, old, old_offset, old_len)?;
            if worth_patching(&p.key.0, &old_bytes, &bytes) {
                let mut patch = Vec::new();
                bsdiff::diff(&old_bytes, &bytes, &mut patch).map_err(io_err(new))?;
                let packed = zstd::bulk::compress(&patch, level).map_err(io_err(new))?;
                if packed.len() < choice.1.len() {
                    choice = (Op::Bsdiff, packed, old_offset, old_len);
                }
            }
        }
        let (op, data, old_offset, old_len) = choice;
        match op {
            Op::Bsdiff => stats.patches += 1,
            _ => stats.literals += 1,
        }
        payloads.write_all(&data).map_err(io_err(&payload_path))?;
        chunks.push(Chunk {
            op,
            new_len: p.len,
            new_sha256,
            old_offset,
            old_len,
            data_len: data.len() as u64,
            data_sha256: crate::io::sha256_hex(&data),
        });
    }
    payloads.flush().map_err(io_err(&payload_path))?;
    drop(payloads);

    let header = DeltaHeader { base_size, base_sha256, target_size, target_sha256, chunks };
    let header = serde_json::to_vec(&header).map_err(|e| super::invalid(e.to_string()))?;
    let header_len = u32::try_from(header.len()).map_err(|_| super::invalid("header too large"))?;
    let mut w = BufWriter::new(File::create(out).map_err(io_err(out))?);
    w.write_all(MAGIC).map_err(io_err(out))?;
    w.write_all(&header_len.to_le_bytes()).map_err(io_err(out))?;
    w.write_all(&header).map_err(io_err(out))?;
    let mut payloads = File::open(&payload_path).map_err(io_err(&payload_path))?;
    std::io::copy(&mut payloads, &mut w).map_err(io_err(out))?;
    let file = w.into_inner().map_err(|e| io_err(out)(e.into_error()))?;
    file.sync_all().map_err(io_err(out))?;
    let _ = std::fs::remove_file(&payload_path);
    stats.size = file.metadata().map_err(io_err(out))?.len();
    Ok(stats)
}
