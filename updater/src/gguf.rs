//! Where each tensor's data lies in a GGUF file, so deltas cut the file on tensor boundaries.
//! The header is read by the shared reader (`outpost_common::gguf`), never the whole file.
//!
//! Layout: `"GGUF"`, version `u32`, tensor count `u64`, kv count `u64`, the kv pairs, the tensor
//! infos (name, `n_dims: u32`, `ne: u64 × n_dims`, type `u32`, offset `u64` relative to the data
//! section), padding to the alignment (`general.alignment`, default 32), then the tensor data.

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

/// Parses the layout of the GGUF file at `path`; `None` if it is not a GGUF file the shared
/// reader understands or its tensor offsets are not consistent with the file size (callers then
/// cut the file into fixed-size chunks).
pub fn layout(path: &Path) -> Option<Layout> {
    let header = outpost_common::gguf::read_header(path).ok()?;
    let (data_start, size) = (header.data_start, header.file_size);
    let mut infos: Vec<(String, u64)> = header.tensors.into_iter().map(|t| (t.name, t.offset)).collect();
    infos.sort_by_key(|(_, off)| *off);
    let mut tensors: Vec<TensorSpan> = Vec::with_capacity(infos.len());
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
    if tensors.is_empty() && data_start != size {
        return None;
    }
    Some(Layout { header_end: header.header_end, alignment: header.alignment, data_start, tensors })
}

pub use outpost_common::gguf::find_string;

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
