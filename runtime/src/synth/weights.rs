//! The tensor plan of a llama-architecture model and the seeded random weights.
//!
//! Each tensor is split into fixed-size chunks; chunk `c` of tensor `t` is drawn from a
//! ChaCha8 stream keyed by the seed with stream id `(t << 32) | c`. The output therefore
//! depends only on the seed, never on the number of threads, and chunks can be generated in
//! parallel and written in order.

use std::io::{self, Write};

use half::f16;
use rand::RngCore;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::gguf::{GgufWriter, TensorInfo, TensorType};
use super::presets::ModelDims;

/// Elements per independently seeded chunk.
const CHUNK_ELEMENTS: u64 = 1 << 18;

/// Standard deviation of the random matrix entries (GPT-2 style init). With RMSNorm before
/// every block and tied embeddings the forward pass stays finite and logits stay moderate.
const WEIGHT_STD: f32 = 0.02;

/// How a tensor is filled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    /// All ones (RMSNorm weights).
    Ones,
    /// Uniform in `[-half_width, half_width)`.
    Uniform { half_width: f32 },
}

/// One tensor of the plan.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorSpec {
    pub info: TensorInfo,
    pub init: Init,
}

/// The tensors of a llama model with tied embeddings, in file order, with the shapes
/// `src/models/llama.cpp` (`load_arch_tensors`) expects (`ne0` first = input dimension).
pub(crate) fn plan(dims: &ModelDims) -> Vec<TensorSpec> {
    let (embd, ff, vocab) = (dims.n_embd as u64, dims.n_ff as u64, dims.n_vocab as u64);
    let q = (dims.head_dim() * dims.n_head) as u64;
    let kv = dims.n_embd_kv() as u64;
    let uniform = Init::Uniform { half_width: WEIGHT_STD * 3f32.sqrt() };
    let matrix = |name: String, ne0: u64, ne1: u64| TensorSpec {
        info: TensorInfo { name, shape: vec![ne0, ne1], ty: TensorType::F16 },
        init: uniform,
    };
    let norm = |name: String| TensorSpec {
        info: TensorInfo { name, shape: vec![embd], ty: TensorType::F32 },
        init: Init::Ones,
    };

    let mut specs = vec![matrix("token_embd.weight".into(), embd, vocab)];
    for i in 0..dims.n_layer {
        let blk = |suffix: &str| format!("blk.{i}.{suffix}.weight");
        specs.push(norm(blk("attn_norm")));
        specs.push(matrix(blk("attn_q"), embd, q));
        specs.push(matrix(blk("attn_k"), embd, kv));
        specs.push(matrix(blk("attn_v"), embd, kv));
        specs.push(matrix(blk("attn_output"), q, embd));
        specs.push(norm(blk("ffn_norm")));
        specs.push(matrix(blk("ffn_gate"), embd, ff));
        specs.push(matrix(blk("ffn_up"), embd, ff));
        specs.push(matrix(blk("ffn_down"), ff, embd));
    }
    specs.push(norm("output_norm.weight".into()));
    specs
}

/// Generates every tensor of `specs` with `threads` worker threads and streams it to `writer`.
pub(crate) fn write_tensors<W: Write>(
    writer: &mut GgufWriter<W>,
    specs: &[TensorSpec],
    seed: u64,
    threads: usize,
) -> io::Result<()> {
    let threads = threads.max(1);
    let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); threads];
    for (tensor_index, spec) in specs.iter().enumerate() {
        let n = spec.info.n_elements();
        let n_chunks = n.div_ceil(CHUNK_ELEMENTS);
        let mut first = 0;
        while first < n_chunks {
            let window = first..n_chunks.min(first + threads as u64);
            let jobs = buffers.iter_mut().zip(window.clone());
            if window.end - window.start == 1 {
                for (buffer, chunk) in jobs {
                    fill_chunk(spec, seed, tensor_index as u64, chunk, buffer);
                }
            } else {
                std::thread::scope(|scope| {
                    for (buffer, chunk) in jobs {
                        scope.spawn(move || fill_chunk(spec, seed, tensor_index as u64, chunk, buffer));
                    }
                });
            }
            for buffer in buffers.iter().take((window.end - window.start) as usize) {
                writer.write_data(buffer)?;
            }
            first = window.end;
        }
        writer.end_tensor()?;
    }
    Ok(())
}

/// Fills `out` with the bytes of chunk `chunk` of the tensor.
fn fill_chunk(spec: &TensorSpec, seed: u64, tensor_index: u64, chunk: u64, out: &mut Vec<u8>) {
    let start = chunk * CHUNK_ELEMENTS;
    let len = CHUNK_ELEMENTS.min(spec.info.n_elements() - start) as usize;
    out.clear();
    out.reserve(len * spec.info.ty.elem_size() as usize);
    let mut push = |v: f32| match spec.info.ty {
        TensorType::F32 => out.extend_from_slice(&v.to_le_bytes()),
        TensorType::F16 => out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes()),
    };
    match spec.init {
        Init::Ones => (0..len).for_each(|_| push(1.0)),
        Init::Uniform { half_width } => {
            let mut rng = chunk_rng(seed, tensor_index, chunk);
            let scale = 2.0 * half_width / (1u32 << 24) as f32;
            for _ in 0..len {
                // 24 random bits -> uniform in [-half_width, half_width).
                let bits = rng.next_u32() >> 8;
                push(bits as f32 * scale - half_width);
            }
        }
    }
}

/// The random stream of one chunk.
fn chunk_rng(seed: u64, tensor_index: u64, chunk: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..].copy_from_slice(b"outpost-synth-weights-v1");
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream((tensor_index << 32) | chunk);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::gguf::Value;
    use crate::synth::Preset;

    #[test]
    fn plan_matches_real_parameter_counts() {
        let count = |p: Preset| -> u64 { plan(&p.dims()).iter().map(|s| s.info.n_elements()).sum() };
        // Qwen2.5-0.5B has 494,032,768 parameters including its q/k/v biases (27,648), which the
        // llama architecture does not have; Llama-3.2-1B has 1.24B, -3B 3.21B.
        assert_eq!(count(Preset::Half), 494_005_120);
        assert_eq!(count(Preset::One), 1_235_814_400);
        assert_eq!(count(Preset::Three), 3_212_749_824);
    }

    #[test]
    fn output_does_not_depend_on_thread_count() -> io::Result<()> {
        let specs: Vec<TensorSpec> = plan(&Preset::Tiny.dims()).into_iter().take(3).collect();
        let infos: Vec<TensorInfo> = specs.iter().map(|s| s.info.clone()).collect();
        let kv = [("general.architecture".to_owned(), Value::Str("llama".into()))];
        let mut outputs = Vec::new();
        for threads in [1, 3] {
            let mut writer = GgufWriter::new(Vec::new(), &kv, infos.clone())?;
            write_tensors(&mut writer, &specs, 7, threads)?;
            outputs.push(writer.finish()?);
        }
        assert_eq!(outputs[0], outputs[1]);
        Ok(())
    }
}
