//! GGUF (v2/v3): the format's constants and a bounded reader of its header — the metadata,
//! the tensor infos and where each tensor's data lies — through a buffered reader, never the
//! whole file.
//!
//! Layout (all integers little-endian), as ggml's `gguf.cpp` reads it: `"GGUF"`, version `u32`,
//! tensor count `u64`, kv count `u64`, the kv pairs (key string, value type `u32`, value), the
//! tensor infos (name, `n_dims: u32`, `ne: u64 × n_dims` with `ne0` the contiguous dimension,
//! ggml type `u32`, offset `u64` relative to the data section), padding to the alignment
//! (`general.alignment`, default [`DEFAULT_ALIGNMENT`]), then the tensor data.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

/// The file magic.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The version writers produce (readers accept 2 and 3).
pub const VERSION: u32 = 3;
/// ggml's `GGUF_DEFAULT_ALIGNMENT`.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Metadata value types (`enum gguf_type`).
pub mod value_type {
    /// `u8`.
    pub const UINT8: u32 = 0;
    /// `i8`.
    pub const INT8: u32 = 1;
    /// `u16`.
    pub const UINT16: u32 = 2;
    /// `i16`.
    pub const INT16: u32 = 3;
    /// `u32`.
    pub const UINT32: u32 = 4;
    /// `i32`.
    pub const INT32: u32 = 5;
    /// `f32`.
    pub const FLOAT32: u32 = 6;
    /// `bool` (one byte).
    pub const BOOL: u32 = 7;
    /// A string: `u64` length, UTF-8 bytes.
    pub const STRING: u32 = 8;
    /// An array: item type `u32`, count `u64`, items.
    pub const ARRAY: u32 = 9;
    /// `u64`.
    pub const UINT64: u32 = 10;
    /// `i64`.
    pub const INT64: u32 = 11;
    /// `f64`.
    pub const FLOAT64: u32 = 12;
}

/// A ggml tensor type: its id, and the bytes one block of elements takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorType {
    /// The `ggml_type` id.
    pub id: u32,
    /// Its name, as llama.cpp prints it (`q4_K`, `f16`...).
    pub name: &'static str,
    /// Elements per block.
    pub block: u64,
    /// Bytes per block.
    pub block_bytes: u64,
}

/// ggml's tensor types with their block sizes (`ggml.c`'s `type_traits`).
pub const TENSOR_TYPES: &[TensorType] = &[
    TensorType { id: 0, name: "f32", block: 1, block_bytes: 4 },
    TensorType { id: 1, name: "f16", block: 1, block_bytes: 2 },
    TensorType { id: 2, name: "q4_0", block: 32, block_bytes: 18 },
    TensorType { id: 3, name: "q4_1", block: 32, block_bytes: 20 },
    TensorType { id: 6, name: "q5_0", block: 32, block_bytes: 22 },
    TensorType { id: 7, name: "q5_1", block: 32, block_bytes: 24 },
    TensorType { id: 8, name: "q8_0", block: 32, block_bytes: 34 },
    TensorType { id: 9, name: "q8_1", block: 32, block_bytes: 36 },
    TensorType { id: 10, name: "q2_K", block: 256, block_bytes: 84 },
    TensorType { id: 11, name: "q3_K", block: 256, block_bytes: 110 },
    TensorType { id: 12, name: "q4_K", block: 256, block_bytes: 144 },
    TensorType { id: 13, name: "q5_K", block: 256, block_bytes: 176 },
    TensorType { id: 14, name: "q6_K", block: 256, block_bytes: 210 },
    TensorType { id: 15, name: "q8_K", block: 256, block_bytes: 292 },
    TensorType { id: 16, name: "iq2_xxs", block: 256, block_bytes: 66 },
    TensorType { id: 17, name: "iq2_xs", block: 256, block_bytes: 74 },
    TensorType { id: 18, name: "iq3_xxs", block: 256, block_bytes: 98 },
    TensorType { id: 19, name: "iq1_s", block: 256, block_bytes: 50 },
    TensorType { id: 20, name: "iq4_nl", block: 32, block_bytes: 18 },
    TensorType { id: 21, name: "iq3_s", block: 256, block_bytes: 110 },
    TensorType { id: 22, name: "iq2_s", block: 256, block_bytes: 82 },
    TensorType { id: 23, name: "iq4_xs", block: 256, block_bytes: 136 },
    TensorType { id: 24, name: "i8", block: 1, block_bytes: 1 },
    TensorType { id: 25, name: "i16", block: 1, block_bytes: 2 },
    TensorType { id: 26, name: "i32", block: 1, block_bytes: 4 },
    TensorType { id: 27, name: "i64", block: 1, block_bytes: 8 },
    TensorType { id: 28, name: "f64", block: 1, block_bytes: 8 },
    TensorType { id: 29, name: "iq1_m", block: 256, block_bytes: 56 },
    TensorType { id: 30, name: "bf16", block: 1, block_bytes: 2 },
    TensorType { id: 34, name: "tq1_0", block: 256, block_bytes: 54 },
    TensorType { id: 35, name: "tq2_0", block: 256, block_bytes: 66 },
];

impl TensorType {
    /// The type with this `ggml_type` id, if known.
    pub fn from_id(id: u32) -> Option<TensorType> {
        TENSOR_TYPES.iter().copied().find(|t| t.id == id)
    }

    /// Bytes `n` elements of this type take (rounded up to whole blocks).
    pub fn bytes(&self, n: u64) -> u64 {
        n.div_ceil(self.block).saturating_mul(self.block_bytes)
    }
}

/// A metadata value. Arrays of numbers or strings are kept (a vocabulary is an array of
/// strings), nested arrays are skipped.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any unsigned integer.
    Uint(u64),
    /// Any signed integer.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// An array (of one type); nested arrays read as empty.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's info.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// Its shape, `ne0` (contiguous) first.
    pub shape: Vec<u64>,
    /// The `ggml_type` id.
    pub type_id: u32,
    /// Offset of its data relative to the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Bytes of data, if the type is known.
    pub fn bytes(&self) -> Option<u64> {
        TensorType::from_id(self.type_id).map(|t| t.bytes(self.elements()))
    }
}

/// A GGUF file's header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor infos, in file order of the infos.
    pub tensors: Vec<TensorInfo>,
    /// Where the tensor infos end.
    pub header_end: u64,
    /// `general.alignment` (default 32).
    pub alignment: u64,
    /// Where the data section starts.
    pub data_start: u64,
    /// The file's size.
    pub file_size: u64,
}

impl Header {
    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// An integer metadata value.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// `general.architecture` (e.g. `llama`).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// An architecture-scoped integer, e.g. `arch_u64("block_count")` for `llama.block_count`.
    pub fn arch_u64(&self, key: &str) -> Option<u64> {
        self.get_u64(&format!("{}.{key}", self.architecture()?))
    }
}

/// Why a file's header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not GGUF, or its header is corrupt or beyond this reader's bounds.
    #[error("{path} is not a GGUF file this reader understands: {reason}")]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

const MAX_COUNT: u64 = 1 << 24;
const MAX_STRING: u64 = 1 << 20;
/// Array items kept in memory (longer arrays, e.g. merges, are skipped over).
const MAX_KEPT_ITEMS: u64 = 1 << 20;

type R<T> = Result<T, &'static str>;

fn u32le(r: &mut impl Read) -> R<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(|_| "truncated")?;
    Ok(u32::from_le_bytes(b))
}

fn u64le(r: &mut impl Read) -> R<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(|_| "truncated")?;
    Ok(u64::from_le_bytes(b))
}

fn string(r: &mut impl Read) -> R<String> {
    let len = u64le(r)?;
    if len > MAX_STRING {
        return Err("a string longer than 1 MiB");
    }
    let mut b = vec![0u8; usize::try_from(len).map_err(|_| "string length")?];
    r.read_exact(&mut b).map_err(|_| "truncated")?;
    String::from_utf8(b).map_err(|_| "a string that is not UTF-8")
}

/// Reads one value of type `ty`; `keep` false skips arrays' items (too long to keep).
fn value(r: &mut impl Read, ty: u32, depth: u32) -> R<Value> {
    use value_type::*;
    let mut b = [0u8; 8];
    let mut fixed = |n: usize| -> R<u64> {
        r.read_exact(&mut b[..n]).map_err(|_| "truncated")?;
        Ok(u64::from_le_bytes(b))
    };
    Ok(match ty {
        UINT8 => Value::Uint(fixed(1)?),
        UINT16 => Value::Uint(fixed(2)?),
        UINT32 => Value::Uint(fixed(4)?),
        UINT64 => Value::Uint(fixed(8)?),
        INT8 => Value::Int(i64::from(fixed(1)? as u8 as i8)),
        INT16 => Value::Int(i64::from(fixed(2)? as u16 as i16)),
        INT32 => Value::Int(i64::from(fixed(4)? as u32 as i32)),
        INT64 => Value::Int(fixed(8)? as i64),
        FLOAT32 => Value::Float(f64::from(f32::from_bits(fixed(4)? as u32))),
        FLOAT64 => Value::Float(f64::from_bits(fixed(8)?)),
        BOOL => Value::Bool(fixed(1)? != 0),
        STRING => Value::Str(string(r)?),
        ARRAY if depth == 0 => {
            let item = u32le(r)?;
            let count = u64le(r)?;
            if count > MAX_COUNT * 16 {
                return Err("an array of more than 2^28 items");
            }
            let mut items = Vec::new();
            for i in 0..count {
                let v = value(r, item, depth + 1)?;
                if i < MAX_KEPT_ITEMS {
                    items.push(v);
                }
            }
            Value::Array(items)
        }
        _ => return Err("an unknown or nested metadata type"),
    })
}

fn magic_and_version(r: &mut impl Read) -> R<u32> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).map_err(|_| "truncated")?;
    if &magic != MAGIC {
        return Err("no GGUF magic");
    }
    match u32le(r)? {
        v @ (2 | 3) => Ok(v),
        _ => Err("an unsupported GGUF version"),
    }
}

fn read(r: &mut BufReader<std::fs::File>, file_size: u64) -> R<Header> {
    let version = magic_and_version(r)?;
    let n_tensors = u64le(r)?;
    let n_kv = u64le(r)?;
    if n_tensors > MAX_COUNT || n_kv > MAX_COUNT {
        return Err("more than 2^24 tensors or keys");
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = string(r)?;
        let ty = u32le(r)?;
        metadata.insert(key, value(r, ty, 0)?);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => v.as_u64().filter(|a| *a > 0 && a.is_power_of_two()).ok_or("a bad general.alignment")?,
    };
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = string(r)?;
        let n_dims = u32le(r)?;
        if n_dims > 8 {
            return Err("a tensor of more than 8 dimensions");
        }
        let shape = (0..n_dims).map(|_| u64le(r)).collect::<R<Vec<_>>>()?;
        let type_id = u32le(r)?;
        tensors.push(TensorInfo { name, shape, type_id, offset: u64le(r)? });
    }
    let header_end = r.stream_position().map_err(|_| "seek")?;
    let data_start = header_end.div_ceil(alignment).checked_mul(alignment).ok_or("overflow")?;
    if data_start > file_size {
        return Err("the data section starts past the end of the file");
    }
    Ok(Header { version, metadata, tensors, header_end, alignment, data_start, file_size })
}

/// Reads the header of the GGUF file at `path`.
pub fn read_header(path: &Path) -> Result<Header, GgufError> {
    let io = |source| GgufError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    read(&mut r, size).map_err(|reason| GgufError::Format { path: path.to_path_buf(), reason })
}

/// Where the string value of the metadata key `key` lies in the GGUF file at `path`: the offset
/// of its `u64` length prefix, and the value. `None` if the file is not GGUF or has no such
/// string key. (For tools that edit metadata in place.)
pub fn find_string(path: &Path, key: &str) -> Option<(u64, String)> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path).ok()?);
    magic_and_version(&mut r).ok()?;
    let _n_tensors = u64le(&mut r).ok()?;
    let n_kv = u64le(&mut r).ok()?.min(MAX_COUNT);
    for _ in 0..n_kv {
        let k = string(&mut r).ok()?;
        let ty = u32le(&mut r).ok()?;
        if k == key && ty == value_type::STRING {
            let at = r.stream_position().ok()?;
            return Some((at, string(&mut r).ok()?));
        }
        value(&mut r, ty, 0).ok()?;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(out: &mut Vec<u8>, text: &str) {
        out.extend((text.len() as u64).to_le_bytes());
        out.extend(text.as_bytes());
    }

    /// A file with three keys and two f32 tensors (4 and 3 elements).
    fn sample() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(MAGIC);
        f.extend(3u32.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        f.extend(3u64.to_le_bytes());
        s(&mut f, "general.architecture");
        f.extend(value_type::STRING.to_le_bytes());
        s(&mut f, "llama");
        s(&mut f, "llama.block_count");
        f.extend(value_type::UINT32.to_le_bytes());
        f.extend(30u32.to_le_bytes());
        s(&mut f, "tokenizer.ggml.tokens");
        f.extend(value_type::ARRAY.to_le_bytes());
        f.extend(value_type::STRING.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        s(&mut f, "<s>");
        s(&mut f, "hi");
        for (name, n, off) in [("a.weight", 4u64, 0u64), ("b.weight", 3, 32)] {
            s(&mut f, name);
            f.extend(1u32.to_le_bytes());
            f.extend(n.to_le_bytes());
            f.extend(0u32.to_le_bytes());
            f.extend(off.to_le_bytes());
        }
        while f.len() % 32 != 0 {
            f.push(0);
        }
        f.extend([1u8; 32]);
        f.extend([2u8; 12]);
        f
    }

    #[test]
    fn reads_metadata_tensors_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let bytes = sample();
        std::fs::write(&p, &bytes).unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.architecture(), Some("llama"));
        assert_eq!(h.arch_u64("block_count"), Some(30));
        let tokens = h.get("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens, &Value::Array(vec![Value::Str("<s>".into()), Value::Str("hi".into())]));
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[1].shape, vec![3]);
        assert_eq!(h.tensors[0].bytes(), Some(16));
        assert_eq!(h.data_start % 32, 0);
        assert_eq!(h.data_start + 44, h.file_size);
        let (at, arch) = find_string(&p, "general.architecture").unwrap();
        assert_eq!(arch, "llama");
        assert_eq!(&bytes[at as usize + 8..at as usize + 13], b"llama");

        std::fs::write(&p, &bytes[..40]).unwrap();
        assert!(matches!(read_header(&p), Err(GgufError::Format { reason: "truncated", .. })));
        std::fs::write(&p, b"not a gguf file").unwrap();
        assert!(matches!(read_header(&p), Err(GgufError::Format { .. })));
    }

    #[test]
    fn block_sizes_round_up() {
        let q4k = TensorType::from_id(12).unwrap();
        assert_eq!((q4k.name, q4k.bytes(256), q4k.bytes(257)), ("q4_K", 144, 288));
        assert!(TensorType::from_id(4).is_none(), "q4_2 was removed from ggml");
    }
}
