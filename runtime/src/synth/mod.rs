//! Synthetic GGUF models: llama architecture, seeded random weights, a real tokenizer.
//!
//! [`synthesize`] writes a GGUF file that llama.cpp loads and generates from (the output is
//! noise, but every code path of loading, tokenizing, chat templating and decoding is real).
//! The presets have the dimensions of real models ([`Preset`]), so a board can be qualified
//! for speed and memory without downloading anything.
//!
//! - Deterministic: the same options give a byte-identical file (the thread count does not
//!   matter); the vocabulary depends only on the preset.
//! - Streaming: tensors are generated chunk by chunk and written in order; memory use does
//!   not grow with the model.
//! - Atomic: the file is written under a temporary name in the destination directory and
//!   renamed into place at the end; temporary files are removed on error.
//! - Quantized outputs (`q8_0`, `q4_k_m`) are produced from an f16 intermediate by
//!   llama.cpp's own quantizer (`llama_model_quantize`).

mod gguf;
mod presets;
mod vocab;
mod weights;
mod words;

#[cfg(test)]
mod tests;

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use presets::{ModelDims, Preset, Quant};

use gguf::{GgufWriter, TensorInfo, Value};

/// The standard ChatML template. llama.cpp's `llama_chat_apply_template` recognises it as
/// `chatml` (it contains `<|im_start|>`), and a Jinja renderer produces the same text.
pub const CHATML_TEMPLATE: &str = concat!(
    "{% for message in messages %}",
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}",
    "{% endfor %}",
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
);

/// Version of the generator's output format, recorded as `outpost.synth.version`; bumped
/// whenever the same options would produce different bytes.
pub const FORMAT_VERSION: u32 = 1;

/// Options of [`synthesize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthOptions {
    /// Model dimensions.
    pub preset: Preset,
    /// Tensor type of the output.
    pub quant: Quant,
    /// Seed of the random weights.
    pub seed: u64,
    /// Output file; its directory is created if missing.
    pub out: PathBuf,
    /// Threads for weight generation and quantization; 0 means all available cores.
    pub threads: usize,
}

/// What [`synthesize`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthReport {
    /// The output file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Number of parameters (weights of all tensors).
    pub n_params: u64,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Number of tensors in the file.
    pub n_tensors: usize,
    /// The preset written.
    pub preset: Preset,
    /// The tensor type written.
    pub quant: Quant,
    /// The seed used.
    pub seed: u64,
    /// The preset's architecture hyperparameters.
    pub dims: ModelDims,
    /// Time spent generating and writing the f16 weights.
    pub generate_time: Duration,
    /// Time spent in llama.cpp's quantizer (`None` for f16).
    pub quantize_time: Option<Duration>,
}

/// Why [`synthesize`] failed; each variant names the failed operation and its path.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The output path cannot be used (no file name, or not representable for llama.cpp).
    #[error("invalid output path {path}: {reason}")]
    InvalidPath {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Creating the output directory failed.
    #[error("cannot create directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Creating a (temporary) file failed.
    #[error("cannot create {path}")]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing the GGUF data failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// llama.cpp's quantizer failed (its log says why).
    #[error("llama.cpp failed to quantize {input} to {quant} ({output}), status {status}")]
    Quantize {
        /// The f16 intermediate.
        input: PathBuf,
        /// The quantized (temporary) file.
        output: PathBuf,
        /// The requested type.
        quant: &'static str,
        /// `llama_model_quantize`'s return value.
        status: u32,
    },
    /// Flushing the finished file to disk failed.
    #[error("cannot sync {path}")]
    Sync {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Moving the finished file into place failed.
    #[error("cannot rename {from} to {to}")]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading the size of the finished file failed.
    #[error("cannot stat {path}")]
    Stat {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Writes a synthetic model as described by `opts` and returns what was written.
///
/// # Errors
/// See [`SynthError`]; on error no file is left at `opts.out` (an existing one is untouched)
/// and temporary files are removed.
pub fn synthesize(opts: &SynthOptions) -> Result<SynthReport, SynthError> {
    let out = &opts.out;
    let file_name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| SynthError::InvalidPath { path: out.clone(), reason: "no UTF-8 file name" })?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|source| SynthError::CreateDir { path: dir.clone(), source })?;
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };

    let dims = opts.preset.dims();
    let vocab = vocab::build(dims.n_vocab as usize);
    let specs = weights::plan(&dims);
    let infos: Vec<TensorInfo> = specs.iter().map(|s| s.info.clone()).collect();
    let kv = metadata(opts, &dims, &vocab);
    let n_params = infos.iter().map(TensorInfo::n_elements).sum();
    tracing::info!(
        preset = opts.preset.name(),
        quant = opts.quant.name(),
        seed = opts.seed,
        n_params,
        f16_bytes = gguf::file_size(&kv, &infos),
        "synthesizing model"
    );

    let final_tmp = TempFile::new(temp_path(&dir, file_name, "tmp"));
    let start = Instant::now();
    let (generate_time, quantize_time) = if opts.quant == Quant::F16 {
        write_f16(final_tmp.path(), &kv, infos, &specs, opts.seed, threads)?;
        (start.elapsed(), None)
    } else {
        let f16_tmp = TempFile::new(temp_path(&dir, file_name, "f16.tmp"));
        write_f16(f16_tmp.path(), &kv, infos, &specs, opts.seed, threads)?;
        let generate_time = start.elapsed();
        quantize(f16_tmp.path(), final_tmp.path(), opts.quant, threads)?;
        // Dropping `f16_tmp` at the end of this block removes the intermediate.
        (generate_time, Some(start.elapsed() - generate_time))
    };

    sync(final_tmp.path())?;
    fs::rename(final_tmp.path(), out).map_err(|source| SynthError::Rename {
        from: final_tmp.path().to_path_buf(),
        to: out.clone(),
        source,
    })?;
    final_tmp.disarm();
    let bytes = fs::metadata(out).map_err(|source| SynthError::Stat { path: out.clone(), source })?.len();
    tracing::info!(path = %out.display(), bytes, ?generate_time, ?quantize_time, "model written");

    Ok(SynthReport {
        path: out.clone(),
        bytes,
        n_params,
        n_vocab: vocab.len(),
        n_tensors: specs.len(),
        preset: opts.preset,
        quant: opts.quant,
        seed: opts.seed,
        dims,
        generate_time,
        quantize_time,
    })
}

/// The GGUF metadata of the f16 file.
fn metadata(opts: &SynthOptions, dims: &ModelDims, vocab: &vocab::Vocab) -> Vec<(String, Value)> {
    let kv = |key: &str, value: Value| (key.to_owned(), value);
    vec![
        kv("general.architecture", Value::Str("llama".into())),
        kv("general.name", Value::Str(format!("outpost-synth-{}", opts.preset.name()))),
        kv("general.file_type", Value::U32(Quant::F16.ftype())),
        kv("llama.context_length", Value::U32(dims.n_ctx_train)),
        kv("llama.embedding_length", Value::U32(dims.n_embd)),
        kv("llama.block_count", Value::U32(dims.n_layer)),
        kv("llama.feed_forward_length", Value::U32(dims.n_ff)),
        kv("llama.attention.head_count", Value::U32(dims.n_head)),
        kv("llama.attention.head_count_kv", Value::U32(dims.n_head_kv)),
        kv("llama.rope.freq_base", Value::F32(dims.rope_freq_base)),
        kv("llama.attention.layer_norm_rms_epsilon", Value::F32(dims.rms_norm_eps)),
        kv("llama.rope.dimension_count", Value::U32(dims.head_dim())),
        kv("llama.vocab_size", Value::U32(dims.n_vocab)),
        kv("outpost.synth.preset", Value::Str(opts.preset.name().into())),
        kv("outpost.synth.seed", Value::U64(opts.seed)),
        kv("outpost.synth.version", Value::U32(FORMAT_VERSION)),
        kv("tokenizer.ggml.model", Value::Str("llama".into())),
        kv("tokenizer.ggml.tokens", Value::StrArray(vocab.tokens.clone())),
        kv("tokenizer.ggml.scores", Value::F32Array(vocab.scores.clone())),
        kv("tokenizer.ggml.token_type", Value::I32Array(vocab.types.clone())),
        kv("tokenizer.ggml.bos_token_id", Value::U32(vocab::BOS_ID)),
        kv("tokenizer.ggml.eos_token_id", Value::U32(vocab::EOS_ID)),
        kv("tokenizer.ggml.unknown_token_id", Value::U32(vocab::UNK_ID)),
        kv("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        kv("tokenizer.ggml.add_eos_token", Value::Bool(false)),
        kv("tokenizer.ggml.add_space_prefix", Value::Bool(true)),
        kv("tokenizer.chat_template", Value::Str(CHATML_TEMPLATE.into())),
    ]
}

/// Writes the f16 model to `path` (created or truncated).
fn write_f16(
    path: &Path,
    kv: &[(String, Value)],
    infos: Vec<TensorInfo>,
    specs: &[weights::TensorSpec],
    seed: u64,
    threads: usize,
) -> Result<(), SynthError> {
    let file =
        File::create(path).map_err(|source| SynthError::CreateFile { path: path.to_path_buf(), source })?;
    let write_err = |source| SynthError::Write { path: path.to_path_buf(), source };
    let mut writer =
        GgufWriter::new(BufWriter::with_capacity(1 << 22, file), kv, infos).map_err(write_err)?;
    weights::write_tensors(&mut writer, specs, seed, threads).map_err(write_err)?;
    writer.finish().map_err(write_err)?;
    Ok(())
}

/// Quantizes the f16 model at `input` into `output` with llama.cpp's quantizer.
fn quantize(input: &Path, output: &Path, quant: Quant, threads: usize) -> Result<(), SynthError> {
    let c_path = |path: &Path| {
        path.to_str().and_then(|s| CString::new(s).ok()).ok_or_else(|| SynthError::InvalidPath {
            path: path.to_path_buf(),
            reason: "not valid UTF-8 without NUL bytes",
        })
    };
    let (c_input, c_output) = (c_path(input)?, c_path(output)?);
    // The shared backend also routes the quantizer's per-tensor log lines to `tracing`.
    crate::engine::backend();
    // SAFETY: plain C calls; the parameter struct comes from llama.cpp's defaults.
    let status = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = quant.ftype();
        params.nthread = i32::try_from(threads).unwrap_or(i32::MAX);
        llama_cpp_sys_2::llama_model_quantize(c_input.as_ptr(), c_output.as_ptr(), &params)
    };
    if status != 0 {
        return Err(SynthError::Quantize {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            quant: quant.name(),
            status,
        });
    }
    Ok(())
}

/// Flushes a finished file to disk, so the rename never exposes a partial file after a crash.
fn sync(path: &Path) -> Result<(), SynthError> {
    let err = |source| SynthError::Sync { path: path.to_path_buf(), source };
    File::open(path).map_err(err)?.sync_all().map_err(err)
}

/// A unique temporary path next to the output: `<dir>/.<name>.<pid>-<n>.<suffix>`.
fn temp_path(dir: &Path, file_name: &str, suffix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{file_name}.{}-{n}.{suffix}", std::process::id()))
}

/// A path that is removed when dropped, unless disarmed.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> Self {
        TempFile { path, armed: true }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the file (it has been renamed into place).
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temporary file")
            }
        }
    }
}
