//! A small streaming GGUF v3 writer.
//!
//! Everything about the file layout is known before the first tensor byte is produced: the
//! metadata, the tensor names, shapes and types, and therefore every tensor's size and offset.
//! [`GgufWriter::new`] writes the header, the key/value metadata and the tensor infos; the
//! caller then streams each tensor's data in order through [`GgufWriter::write_data`] and
//! [`GgufWriter::end_tensor`], so a multi-gigabyte model never has to be held in memory.
//!
//! Layout (all integers little-endian), as read by ggml's `gguf.cpp`:
//! `"GGUF"`, version `u32`, tensor count `u64`, kv count `u64`, the kv pairs, the tensor infos
//! (name, `n_dims: u32`, `ne[n_dims]: u64` with `ne0` the contiguous/input dimension, ggml type
//! `u32`, offset `u64` relative to the data section), padding to [`ALIGNMENT`], then each
//! tensor's data, each padded to [`ALIGNMENT`].

use std::io::{self, Write};

use outpost_common::gguf::value_type::UINT64 as T_UINT64;
use outpost_common::gguf::value_type::{ARRAY as T_ARRAY, BOOL as T_BOOL, FLOAT32 as T_FLOAT32};
use outpost_common::gguf::value_type::{INT32 as T_INT32, STRING as T_STRING, UINT32 as T_UINT32};
use outpost_common::gguf::{MAGIC, VERSION};

/// Data alignment: ggml's `GGUF_DEFAULT_ALIGNMENT` (no `general.alignment` key is written).
pub(crate) const ALIGNMENT: u64 = outpost_common::gguf::DEFAULT_ALIGNMENT;

/// A metadata value (only the kinds this generator needs).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    U32(u32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    F32Array(Vec<f32>),
    I32Array(Vec<i32>),
}

/// Tensor element types this generator writes directly (quantized types come from llama.cpp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TensorType {
    F32,
    F16,
}

impl TensorType {
    /// The `ggml_type` id.
    fn ggml_id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
        }
    }

    /// Bytes per element.
    pub(crate) fn elem_size(self) -> u64 {
        match self {
            TensorType::F32 => 4,
            TensorType::F16 => 2,
        }
    }
}

/// Name, shape (`ne0` first) and type of one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TensorInfo {
    pub name: String,
    pub shape: Vec<u64>,
    pub ty: TensorType,
}

impl TensorInfo {
    /// Number of elements.
    pub(crate) fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Size of the data in bytes (without padding).
    pub(crate) fn n_bytes(&self) -> u64 {
        self.n_elements() * self.ty.elem_size()
    }
}

/// Rounds `n` up to a multiple of [`ALIGNMENT`].
pub(crate) fn pad_to_alignment(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// Total file size for the given metadata and tensors, computed without writing anything.
pub(crate) fn file_size(kv: &[(String, Value)], tensors: &[TensorInfo]) -> u64 {
    let mut counter = CountingSink(0);
    // Writing to a counting sink cannot fail.
    let header = write_header(&mut counter, kv, tensors).map(|()| counter.0);
    let header = header.unwrap_or_default();
    pad_to_alignment(header) + tensors.iter().map(|t| pad_to_alignment(t.n_bytes())).sum::<u64>()
}

/// A [`Write`] that only counts bytes.
struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Streams a GGUF file: header first, then each tensor's data in declaration order.
pub(crate) struct GgufWriter<W: Write> {
    out: W,
    /// Bytes written so far.
    pos: u64,
    tensors: Vec<TensorInfo>,
    /// Index of the tensor whose data is being written.
    current: usize,
    /// Bytes of the current tensor written so far.
    current_written: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header, metadata and tensor infos, and pads to the data section.
    pub(crate) fn new(mut out: W, kv: &[(String, Value)], tensors: Vec<TensorInfo>) -> io::Result<Self> {
        let mut counting = CountingWriter { inner: &mut out, count: 0 };
        write_header(&mut counting, kv, &tensors)?;
        let pos = counting.count;
        let mut this = GgufWriter { out, pos, tensors, current: 0, current_written: 0 };
        this.pad()?;
        Ok(this)
    }

    /// Appends `data` to the current tensor.
    pub(crate) fn write_data(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(info) = self.tensors.get(self.current) else {
            return Err(io::Error::other("GGUF writer: data after the last tensor"));
        };
        let len = data.len() as u64;
        if self.current_written + len > info.n_bytes() {
            return Err(io::Error::other(format!("GGUF writer: too much data for tensor {}", info.name)));
        }
        self.out.write_all(data)?;
        self.current_written += len;
        self.pos += len;
        Ok(())
    }

    /// Finishes the current tensor (checks its size, pads to the alignment).
    pub(crate) fn end_tensor(&mut self) -> io::Result<()> {
        let Some(info) = self.tensors.get(self.current) else {
            return Err(io::Error::other("GGUF writer: no tensor to end"));
        };
        if self.current_written != info.n_bytes() {
            return Err(io::Error::other(format!(
                "GGUF writer: tensor {} has {} bytes, expected {}",
                info.name,
                self.current_written,
                info.n_bytes()
            )));
        }
        self.pad()?;
        self.current += 1;
        self.current_written = 0;
        Ok(())
    }

    /// Checks that every tensor was written, flushes, and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if self.current != self.tensors.len() {
            return Err(io::Error::other(format!(
                "GGUF writer: {} of {} tensors written",
                self.current,
                self.tensors.len()
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }

    /// Bytes written so far.
    #[cfg(test)]
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = pad_to_alignment(self.pos) - self.pos;
        const ZEROS: [u8; ALIGNMENT as usize] = [0; ALIGNMENT as usize];
        // n < ALIGNMENT, so the cast and slice are in range.
        self.out.write_all(&ZEROS[..n as usize])?;
        self.pos += n;
        Ok(())
    }
}

/// A [`Write`] adapter that counts the bytes passed through.
struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Header, metadata and tensor infos (everything before the data section's padding).
fn write_header<W: Write>(w: &mut W, kv: &[(String, Value)], tensors: &[TensorInfo]) -> io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.write_all(&(tensors.len() as u64).to_le_bytes())?;
    w.write_all(&(kv.len() as u64).to_le_bytes())?;
    for (key, value) in kv {
        write_str(w, key)?;
        write_value(w, value)?;
    }
    let mut offset = 0u64;
    for t in tensors {
        write_str(w, &t.name)?;
        w.write_all(&(t.shape.len() as u32).to_le_bytes())?;
        for &ne in &t.shape {
            w.write_all(&ne.to_le_bytes())?;
        }
        w.write_all(&t.ty.ggml_id().to_le_bytes())?;
        w.write_all(&offset.to_le_bytes())?;
        offset += pad_to_alignment(t.n_bytes());
    }
    Ok(())
}

fn write_str<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_array_header<W: Write>(w: &mut W, elem_type: u32, n: usize) -> io::Result<()> {
    w.write_all(&T_ARRAY.to_le_bytes())?;
    w.write_all(&elem_type.to_le_bytes())?;
    w.write_all(&(n as u64).to_le_bytes())
}

fn write_value<W: Write>(w: &mut W, value: &Value) -> io::Result<()> {
    match value {
        Value::U32(v) => {
            w.write_all(&T_UINT32.to_le_bytes())?;
            w.write_all(&v.to_le_bytes())
        }
        Value::U64(v) => {
            w.write_all(&T_UINT64.to_le_bytes())?;
            w.write_all(&v.to_le_bytes())
        }
        Value::F32(v) => {
            w.write_all(&T_FLOAT32.to_le_bytes())?;
            w.write_all(&v.to_le_bytes())
        }
        Value::Bool(v) => {
            w.write_all(&T_BOOL.to_le_bytes())?;
            w.write_all(&[u8::from(*v)])
        }
        Value::Str(s) => {
            w.write_all(&T_STRING.to_le_bytes())?;
            write_str(w, s)
        }
        Value::StrArray(items) => {
            write_array_header(w, T_STRING, items.len())?;
            items.iter().try_for_each(|s| write_str(w, s))
        }
        Value::F32Array(items) => {
            write_array_header(w, T_FLOAT32, items.len())?;
            items.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))
        }
        Value::I32Array(items) => {
            write_array_header(w, T_INT32, items.len())?;
            items.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_precomputed_size() -> io::Result<()> {
        let kv = vec![
            ("general.architecture".to_owned(), Value::Str("llama".into())),
            ("a.b".to_owned(), Value::I32Array(vec![1, 2, 3])),
        ];
        let tensors = vec![
            TensorInfo { name: "x".into(), shape: vec![3], ty: TensorType::F32 },
            TensorInfo { name: "y".into(), shape: vec![4, 2], ty: TensorType::F16 },
        ];
        let expected = file_size(&kv, &tensors);
        let mut w = GgufWriter::new(Vec::new(), &kv, tensors)?;
        assert_eq!(w.position() % ALIGNMENT, 0);
        let data_start = w.position() as usize;
        w.write_data(&[1; 12])?;
        w.end_tensor()?;
        w.write_data(&[2; 10])?;
        assert!(w.write_data(&[2; 7]).is_err(), "overlong tensor data accepted");
        w.write_data(&[2; 6])?;
        w.end_tensor()?;
        let bytes = w.finish()?;
        assert_eq!(bytes.len() as u64, expected);
        assert_eq!(&bytes[..4], b"GGUF");
        assert_eq!(bytes[data_start + 32], 2, "second tensor not at its aligned offset");
        Ok(())
    }
}
