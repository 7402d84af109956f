//! Synthetic GGUF v3 files for tests and measurements: a valid header with some metadata and a
//! few f32 tensors of pseudo-random bytes. Not used by the updater itself.

use std::io::Write;
use std::path::Path;

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
