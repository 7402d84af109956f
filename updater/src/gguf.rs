//! Just enough of GGUF (v2/v3) to find where each tensor's data lies, so deltas cut the file on
//! tensor boundaries. The header is read through a buffered reader, never the whole file.
//!
//! Layout: `"GGUF"`, version `u32`, tensor count `u64`, kv count `u64`, the kv pairs, the tensor
//! infos (name, `n_dims: u32`, `ne: u64 × n_dims`, type `u32`, offset `u64` relative to the data
//! section), padding to the alignment (`general.alignment`, default 32), then the tensor data.

use std::io::{BufReader, Read, Seek};
use std::path::Path;

/// One tensor's bytes in the file, padding to the next tensor included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpan {
    /// The tensor's name.
    pub name: String,
    /// Absolute file offset of its data.
    pub offset: u64,
    /// Bytes up to the next tensor's data (or the end of the file).
    pub len: u64,
}

/// The layout of a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Where the tensor infos end (the padding to `data_start` follows).
    pub header_end: u64,
    /// `general.alignment` (default 32).
    pub alignment: u64,
    /// Where the data section starts (the header and padding lie before it).
    pub data_start: u64,
    /// Tensors in file order, covering `data_start..file end` without gaps.
    pub tensors: Vec<TensorSpan>,
}

const MAX_COUNT: u64 = 1 << 24;
const MAX_STRING: u64 = 1 << 20;

fn u32le(r: &mut impl Read) -> Option<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

fn u64le(r: &mut impl Read) -> Option<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

fn string(r: &mut impl Read) -> Option<String> {
    let len = u64le(r)?;
    if len > MAX_STRING {
        return None;
    }
    let mut b = vec![0u8; usize::try_from(len).ok()?];
    r.read_exact(&mut b).ok()?;
    String::from_utf8(b).ok()
}

fn skip(r: &mut impl Read, n: u64) -> Option<()> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink()).ok()?;
    (copied == n).then_some(())
}

/// Reads (or skips) one value of type `ty`; returns it as u64 when it is an integer.
fn value(r: &mut impl Read, ty: u32, depth: u32) -> Option<Option<u64>> {
    let fixed = match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    if let Some(n) = fixed {
        let mut b = [0u8; 8];
        r.read_exact(&mut b[..n]).ok()?;
        return Some(matches!(ty, 0 | 2 | 4 | 10).then(|| u64::from_le_bytes(b)));
    }
    match ty {
        8 => {
            let len = u64le(r)?;
            skip(r, len)?;
            Some(None)
        }
        9 if depth == 0 => {
            let item = u32le(r)?;
            let count = u64le(r)?;
            if count > MAX_COUNT * 16 {
                return None;
            }
            for _ in 0..count {
                value(r, item, depth + 1)?;
            }
            Some(None)
        }
        _ => None,
    }
}

/// Parses the layout of the GGUF file at `path`; `None` if it is not a GGUF file this parser
/// understands or its tensor offsets are not consistent with the file size (callers then cut
/// the file into fixed-size chunks).
pub fn layout(path: &Path) -> Option<Layout> {
    let file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).ok()?;
    if &magic != b"GGUF" || !matches!(u32le(&mut r)?, 2 | 3) {
        return None;
    }
    let n_tensors = u64le(&mut r)?;
    let n_kv = u64le(&mut r)?;
    if n_tensors > MAX_COUNT || n_kv > MAX_COUNT {
        return None;
    }
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let key = string(&mut r)?;
        let ty = u32le(&mut r)?;
        let v = value(&mut r, ty, 0)?;
        if key == "general.alignment" {
            alignment = v.filter(|a| *a > 0 && a.is_power_of_two())?;
        }
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = string(&mut r)?;
        let n_dims = u32le(&mut r)?;
        if n_dims > 8 {
            return None;
        }
        skip(&mut r, 8 * u64::from(n_dims))?;
        let _ty = u32le(&mut r)?;
        infos.push((name, u64le(&mut r)?));
    }
    let pos = r.stream_position().ok()?;
    let data_start = pos.div_ceil(alignment).checked_mul(alignment)?;
    let mut tensors: Vec<TensorSpan> = Vec::with_capacity(infos.len());
    infos.sort_by_key(|(_, off)| *off);
    for (i, (name, rel)) in infos.iter().enumerate() {
        let offset = data_start.checked_add(*rel)?;
        let end = match infos.get(i + 1) {
            Some((_, next)) => data_start.checked_add(*next)?,
            None => size,
        };
        if end < offset || end > size || (i == 0 && offset != data_start) {
            return None;
        }
        tensors.push(TensorSpan { name: name.clone(), offset, len: end - offset });
    }
    if data_start > size || (tensors.is_empty() && data_start != size) {
        return None;
    }
    Some(Layout { header_end: pos, alignment, data_start, tensors })
}

/// Where the string value of the metadata key `key` lies in the GGUF file at `path`: the offset
/// of its `u64` length prefix, and the value. `None` if the file is not GGUF or has no such
/// string key. (For tools that edit metadata, such as the measurement's test models.)
pub fn find_string(path: &Path, key: &str) -> Option<(u64, String)> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path).ok()?);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).ok()?;
    if &magic != b"GGUF" || !matches!(u32le(&mut r)?, 2 | 3) {
        return None;
    }
    let _n_tensors = u64le(&mut r)?;
    let n_kv = u64le(&mut r)?.min(MAX_COUNT);
    for _ in 0..n_kv {
        let k = string(&mut r)?;
        let ty = u32le(&mut r)?;
        if k == key && ty == 8 {
            let at = r.stream_position().ok()?;
            return Some((at, string(&mut r)?));
        }
        value(&mut r, ty, 0)?;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testutil::{write_gguf, TestTensor};

    #[test]
    fn finds_tensor_spans_of_a_written_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let tensors = vec![
            TestTensor::random("a", 100, 1),
            TestTensor::random("b", 1000, 2),
            TestTensor::random("c", 7, 3),
        ];
        let offsets = write_gguf(&p, "m", &tensors);
        let l = layout(&p).unwrap();
        let size = std::fs::metadata(&p).unwrap().len();
        assert_eq!(l.tensors.len(), 3);
        assert_eq!(l.tensors[0].offset, l.data_start);
        for (span, (t, off)) in l.tensors.iter().zip(tensors.iter().zip(&offsets)) {
            assert_eq!(span.name, t.name);
            assert_eq!(span.offset, *off);
        }
        assert_eq!(l.tensors[2].offset + l.tensors[2].len, size);
        let (at, name) = find_string(&p, "general.name").unwrap();
        assert_eq!(name, "m");
        assert_eq!(&std::fs::read(&p).unwrap()[at as usize + 8..at as usize + 9], b"m");
        assert!(find_string(&p, "general.nope").is_none());

        // A longer name moves the data section; the tensors keep their bytes.
        let q = dir.path().join("renamed.gguf");
        crate::testutil::rewrite_gguf(&p, &q, Some("a much longer name for this model"), |i, _, b| {
            if i == 1 {
                b[0] ^= 1;
            }
        });
        let m = layout(&q).unwrap();
        assert!(m.data_start > l.data_start);
        assert_eq!(find_string(&q, "general.name").unwrap().1, "a much longer name for this model");
        let (old, new) = (std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
        for (i, (a, b)) in l.tensors.iter().zip(&m.tensors).enumerate() {
            assert_eq!((&a.name, a.len), (&b.name, b.len));
            let (a, b) =
                (&old[a.offset as usize..][..a.len as usize], &new[b.offset as usize..][..b.len as usize]);
            assert_eq!(a == b, i != 1, "tensor {i}");
        }
        std::fs::write(&p, b"not a gguf at all").unwrap();
        assert!(layout(&p).is_none());
    }
}
