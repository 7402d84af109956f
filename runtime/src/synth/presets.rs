//! Model size presets and output types.

/// Model size presets: the dimensions of real models, so a board can be qualified for speed and
/// memory without downloading anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Preset {
    /// A few MB, for tests: 256 hidden, 2 layers, 4 heads (2 KV), 8192-token vocabulary.
    Tiny,
    /// Qwen2.5-0.5B dimensions: 896 hidden, 24 layers, 14 heads (2 KV), 151936-token vocabulary.
    #[value(name = "0.5b")]
    Half,
    /// Llama-3.2-1B dimensions: 2048 hidden, 16 layers, 32 heads (8 KV), 128256-token vocabulary.
    #[value(name = "1b")]
    One,
    /// Llama-3.2-3B dimensions: 3072 hidden, 28 layers, 24 heads (8 KV), 128256-token vocabulary.
    #[value(name = "3b")]
    Three,
}

/// Architecture hyperparameters of a preset (llama architecture, tied embeddings).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelDims {
    /// Hidden size (`llama.embedding_length`).
    pub n_embd: u32,
    /// Number of transformer blocks (`llama.block_count`).
    pub n_layer: u32,
    /// Attention heads (`llama.attention.head_count`).
    pub n_head: u32,
    /// Key/value heads, for grouped-query attention (`llama.attention.head_count_kv`).
    pub n_head_kv: u32,
    /// Feed-forward inner size (`llama.feed_forward_length`).
    pub n_ff: u32,
    /// Vocabulary size (`llama.vocab_size`; also the embedding matrix's row count).
    pub n_vocab: u32,
    /// Training context length (`llama.context_length`).
    pub n_ctx_train: u32,
    /// RoPE base frequency (`llama.rope.freq_base`).
    pub rope_freq_base: f32,
    /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`).
    pub rms_norm_eps: f32,
}

impl ModelDims {
    /// Size of one attention head (`llama.rope.dimension_count`).
    pub fn head_dim(&self) -> u32 {
        self.n_embd / self.n_head
    }

    /// Width of the K and V projections.
    pub fn n_embd_kv(&self) -> u32 {
        self.head_dim() * self.n_head_kv
    }
}

impl Preset {
    /// Every preset, smallest first.
    pub const ALL: [Preset; 4] = [Preset::Tiny, Preset::Half, Preset::One, Preset::Three];

    /// The name used on the command line and in the file's metadata (`tiny`, `0.5b`, `1b`, `3b`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Half => "0.5b",
            Preset::One => "1b",
            Preset::Three => "3b",
        }
    }

    /// The preset's architecture hyperparameters.
    pub fn dims(self) -> ModelDims {
        match self {
            // n_embd and n_ff are multiples of 256 so that q4_k_m really uses k-quants.
            Preset::Tiny => ModelDims {
                n_embd: 256,
                n_layer: 2,
                n_head: 4,
                n_head_kv: 2,
                n_ff: 768,
                n_vocab: 8192,
                n_ctx_train: 4096,
                rope_freq_base: 10_000.0,
                rms_norm_eps: 1e-5,
            },
            Preset::Half => ModelDims {
                n_embd: 896,
                n_layer: 24,
                n_head: 14,
                n_head_kv: 2,
                n_ff: 4864,
                n_vocab: 151_936,
                n_ctx_train: 32_768,
                rope_freq_base: 1_000_000.0,
                rms_norm_eps: 1e-6,
            },
            Preset::One => ModelDims {
                n_embd: 2048,
                n_layer: 16,
                n_head: 32,
                n_head_kv: 8,
                n_ff: 8192,
                n_vocab: 128_256,
                n_ctx_train: 131_072,
                rope_freq_base: 500_000.0,
                rms_norm_eps: 1e-5,
            },
            Preset::Three => ModelDims {
                n_embd: 3072,
                n_layer: 28,
                n_head: 24,
                n_head_kv: 8,
                n_ff: 8192,
                n_vocab: 128_256,
                n_ctx_train: 131_072,
                rope_freq_base: 500_000.0,
                rms_norm_eps: 1e-5,
            },
        }
    }
}

/// Output tensor type of the generated file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Quant {
    /// 16-bit floats for every matrix (norm weights stay f32).
    F16,
    /// llama.cpp's `Q8_0` (8-bit, block size 32).
    #[value(name = "q8_0")]
    Q8_0,
    /// llama.cpp's `Q4_K_M` mix (mostly 4-bit k-quants, some 6-bit).
    #[value(name = "q4_k_m")]
    Q4KM,
}

impl Quant {
    /// The name used on the command line (`f16`, `q8_0`, `q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            Quant::F16 => "f16",
            Quant::Q8_0 => "q8_0",
            Quant::Q4KM => "q4_k_m",
        }
    }

    /// The matching `llama_ftype` (`general.file_type`).
    pub(crate) fn ftype(self) -> llama_cpp_sys_2::llama_ftype {
        match self {
            Quant::F16 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_F16,
            Quant::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
            Quant::Q4KM => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M,
        }
    }
}
