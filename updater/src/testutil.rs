//! Synthetic GGUF v3 files for tests and measurements: a valid header with some metadata and a
//! few f32 tensors of pseudo-random bytes; and edits of existing GGUF files (a new name, changed
//! tensors). Not used by the updater itself.

use std::io::{Read, Write};
use std::path::Path;

use crate::gguf::{self, TensorSpan};

/// A tensor to write: name and raw data (written as a 1-D f32 tensor, data padded to 4 bytes).
#[derive(Clone, Debug)]
pub struct TestTensor {
    /// Its name.
    pub name: String,
    /// Its bytes (a multiple of 4).
    pub data: Vec<u8>,
}

impl TestTensor {
    /// `elems` f32 elements of pseudo-random bytes from `seed`.
    pub fn random(name: &str, elems: usize, seed: u64) -> Self {
        Self { name: name.into(), data: random_bytes(elems * 4, seed) }
    }

    /// Flips a few bytes in place, spread over the tensor (a "slightly changed" tensor).
    pub fn perturb(&mut self, every: usize) {
        for i in (0..self.data.len()).step_by(every.max(1)) {
            self.data[i] ^= 0x01;
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes a GGUF v3 file named `name` (in `general.name`) holding `tensors`; returns each
/// tensor's absolute data offset.
pub fn write_gguf(path: &Path, name: &str, tensors: &[TestTensor]) -> Vec<u64> {
    let mut h = Vec::new();
    h.extend_from_slice(b"GGUF");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&3u64.to_le_bytes());
    put_str(&mut h, "general.name");
    h.extend_from_slice(&8u32.to_le_bytes());
    put_str(&mut h, name);
    put_str(&mut h, "general.alignment");
    h.extend_from_slice(&4u32.to_le_bytes());
    h.extend_from_slice(&32u32.to_le_bytes());
    put_str(&mut h, "tokenizer.ggml.tokens");
    h.extend_from_slice(&9u32.to_le_bytes());
    h.extend_from_slice(&8u32.to_le_bytes());
    h.extend_from_slice(&64u64.to_le_bytes());
    for i in 0..64 {
        put_str(&mut h, &format!("tok{i}"));
    }
    let mut rel = Vec::new();
    let mut off = 0u64;
    for t in tensors {
        put_str(&mut h, &t.name);
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&(t.data.len() as u64 / 4).to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&off.to_le_bytes());
        rel.push(off);
        off = (off + t.data.len() as u64).div_ceil(32) * 32;
    }
    let data_start = (h.len() as u64).div_ceil(32) * 32;
    h.resize(data_start as usize, 0);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create test gguf"));
    f.write_all(&h).expect("write test gguf");
    for (i, t) in tensors.iter().enumerate() {
        f.write_all(&t.data).expect("write test gguf");
        if i + 1 < tensors.len() {
            let pad = (t.data.len() as u64).div_ceil(32) * 32 - t.data.len() as u64;
            f.write_all(&vec![0u8; pad as usize]).expect("write test gguf");
        }
    }
    f.flush().expect("write test gguf");
    rel.into_iter().map(|r| r + data_start).collect()
}

/// Writes `dst`: the GGUF file `src` with `general.name` set to `name` when given (the header
/// changes length; tensor offsets are relative to the data section, which moves with it) and each
/// tensor's bytes (padding included) passed through `edit(index, span, bytes)` in file order
/// (which must keep their length).
/// Streams one tensor at a time. Panics on a file that is not GGUF.
pub fn rewrite_gguf(
    src: &Path,
    dst: &Path,
    name: Option<&str>,
    mut edit: impl FnMut(usize, &TensorSpan, &mut Vec<u8>),
) {
    let layout = gguf::layout(src).expect("a GGUF file");
    let mut input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(src).expect("open"));
    let mut header = vec![0u8; layout.header_end as usize];
    input.read_exact(&mut header).expect("read header");
    if let Some(name) = name {
        let (at, old) = gguf::find_string(src, "general.name").expect("general.name");
        let at = at as usize;
        let mut new = header[..at].to_vec();
        new.extend_from_slice(&(name.len() as u64).to_le_bytes());
        new.extend_from_slice(name.as_bytes());
        new.extend_from_slice(&header[at + 8 + old.len()..]);
        header = new;
    }
    let padded = (header.len() as u64).div_ceil(layout.alignment) * layout.alignment;
    header.resize(padded as usize, 0);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dst).expect("create"));
    out.write_all(&header).expect("write");
    let mut skip = vec![0u8; (layout.data_start - layout.header_end) as usize];
    input.read_exact(&mut skip).expect("read padding");
    for (i, span) in layout.tensors.iter().enumerate() {
        let mut bytes = vec![0u8; span.len as usize];
        input.read_exact(&mut bytes).expect("read tensor");
        edit(i, span, &mut bytes);
        assert_eq!(bytes.len() as u64, span.len, "an edit changed the length of {}", span.name);
        out.write_all(&bytes).expect("write");
    }
    out.flush().expect("write");
}
