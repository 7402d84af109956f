//! The memory estimate: what `outpost serve` will hold once a request has filled the context,
//! part by part, from the GGUF header and the configuration alone.
//!
//! The parts (sizes in bytes; `docs/boards.md` has the measurements behind the constants):
//!
//! - **weights**: every tensor's data (the file is mapped, and inference touches all of it).
//!   On a board with unified memory the layers offloaded to the GPU are listed apart but count
//!   against the same DRAM.
//! - **repacked pages**: the file pages of the matrices llama.cpp repacks for the board's CPU
//!   ([`super::repack`]) stay resident beside their repacked copy. They are clean page cache
//!   (reclaimable: `Part::reclaimable`), but they are in the peak RSS.
//! - **KV cache**: `model.context` cells (padded to 256) for each of `api.parallel` slots, f16
//!   K and V for every layer and KV head: `cells × layers × kv_heads × (key_len + value_len) × 2`.
//!   llama.cpp zeroes it at creation, so all of it is resident from the start.
//! - **compute**: llama.cpp's activations for one micro-batch (`min(model.batch, 512)` tokens).
//!   The graph allocator reuses memory between the attention and the feed-forward phases, so
//!   the larger phase counts: without flash attention the attention scores of every head over
//!   the whole context (`ubatch × context × heads`, f32), else the feed-forward's gate and up
//!   activations (`2 × ubatch × ffn`, f32). The CPU backend's work buffer adds the larger of the
//!   scores' f16 copy and the quantized feed-forward input; the residual stream adds a few
//!   `ubatch × embedding` rows, and the output logits those of the tokens that need them (one
//!   per slot: the engine asks for no others). llama.cpp *reserves* logits for every token of a
//!   micro-batch (`n_vocab × ubatch × 4`), but those pages are never touched, so they are not
//!   counted.
//! - **runtime**: the process itself (code, llama.cpp's backend and threads, tokio) plus the
//!   vocabulary tables llama.cpp builds (per token, and per BPE merge).
//! - **router**: `router.onnx` plus ONNX Runtime's library and arenas, when `router.enabled`.
//! - **response cache**: the in-memory vector index (about 490 bytes per entry, at most
//!   `cache.max_entries`) and SQLite's page cache, when `cache.enabled`.
//!
//! The board adds its OS reserve; the sum is compared with its memory.

use std::path::Path;

use outpost_common::gguf::Header;
use serde::Serialize;

pub use super::repack::CpuKind;

const MIB: u64 = 1024 * 1024;

/// The process without a model: code (about 19 MiB of the binary is resident), llama.cpp's CPU
/// backend and thread pool, tokio, buffers. Fitted with the others below to the peak RSS of
/// the `tiny`, `0.5b`, `1b` presets and SmolLM2 (`docs/boards.md`).
pub const RUNTIME_BASE: u64 = 26 * MIB;
/// Bytes llama.cpp keeps per vocabulary entry (token text twice, its piece cache, score, type,
/// hash-map node) and, transiently while loading, the GGUF metadata copy.
pub const PER_VOCAB_ENTRY: u64 = 200;
/// Bytes per BPE merge (the rank map of string pairs).
pub const PER_MERGE: u64 = 120;
/// ONNX Runtime's library, session and arenas beyond the size of `router.onnx` (measured:
/// the peak RSS with the router enabled was 83–84 MiB above that without, `tiny` and SmolLM2).
pub const ROUTER_OVERHEAD: u64 = 62 * MIB;
/// Index bytes per cache entry (`cache/index.rs`: codes, int8 copy, ids, filters, map slot).
pub const CACHE_PER_ENTRY: u64 = 490;
/// SQLite's page cache (its default, 2,000 KiB) plus statement and connection overhead.
pub const CACHE_SQLITE: u64 = 4 * MIB;
/// The largest micro-batch llama.cpp runs (`n_ubatch`, as the engine sets it).
pub const MAX_UBATCH: u64 = 512;
/// KV cells are allocated in multiples of this.
pub const KV_PAD: u64 = 256;

/// What the estimate needs from a GGUF header.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelFacts {
    /// `general.architecture`.
    pub architecture: String,
    /// Parameters (elements of all tensors).
    pub parameters: u64,
    /// Bytes of all tensor data.
    pub weights_bytes: u64,
    /// Bytes of each block's tensors (`blk.N.*`), by N.
    pub layer_bytes: Vec<u64>,
    /// Bytes of `output.weight` (0 when the embeddings are tied).
    pub output_bytes: u64,
    /// `<arch>.block_count`.
    pub layers: u64,
    /// `<arch>.embedding_length`.
    pub embedding: u64,
    /// `<arch>.attention.head_count`.
    pub heads: u64,
    /// `<arch>.attention.head_count_kv` (default: `heads`).
    pub kv_heads: u64,
    /// `<arch>.attention.key_length` (default: embedding / heads).
    pub key_length: u64,
    /// `<arch>.attention.value_length` (default: `key_length`).
    pub value_length: u64,
    /// `<arch>.feed_forward_length`.
    pub feed_forward: u64,
    /// Tokens in the vocabulary.
    pub vocab: u64,
    /// BPE merges (0 for SentencePiece vocabularies).
    pub merges: u64,
    /// `<arch>.context_length`: the context the model was trained with.
    pub trained_context: u64,
    /// The matrices, for the repacking rules.
    #[serde(skip)]
    pub matrices: Vec<Matrix>,
}

/// A 2-D weight: what decides whether llama.cpp repacks it.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    /// ggml type id.
    pub type_id: u32,
    /// `ne[1]`.
    pub rows: u64,
    /// Bytes of data.
    pub bytes: u64,
    /// The block (`blk.N.`) it belongs to, if any.
    pub layer: Option<u64>,
    /// The token embeddings (looked up by row, never repacked).
    pub embeddings: bool,
}

/// The header lacks a value the estimate needs.
#[derive(Debug, thiserror::Error)]
#[error("{path}: the GGUF header has no {key}")]
pub struct FactsError {
    /// The model file.
    pub path: std::path::PathBuf,
    /// The missing key.
    pub key: String,
}

impl ModelFacts {
    /// Reads the facts from a header (of the file at `path`, for messages).
    pub fn from_header(header: &Header, path: &Path) -> Result<Self, FactsError> {
        let missing = |key: &str| FactsError { path: path.to_path_buf(), key: key.to_owned() };
        let arch = header.architecture().ok_or_else(|| missing("general.architecture"))?.to_owned();
        let need = |key: &str| header.arch_u64(key).ok_or_else(|| missing(&format!("{arch}.{key}")));
        let layers = need("block_count")?;
        let embedding = need("embedding_length")?;
        let heads = need("attention.head_count")?.max(1);
        let kv_heads = header.arch_u64("attention.head_count_kv").unwrap_or(heads);
        let key_length = header.arch_u64("attention.key_length").unwrap_or(embedding / heads);
        let value_length = header.arch_u64("attention.value_length").unwrap_or(key_length);
        let feed_forward = header.arch_u64("feed_forward_length").unwrap_or(4 * embedding);
        let array_len = |key: &str| match header.get(key) {
            Some(outpost_common::gguf::Value::Array(items)) => items.len() as u64,
            _ => 0,
        };
        let vocab = match array_len("tokenizer.ggml.tokens") {
            0 => header.arch_u64("vocab_size").unwrap_or(0),
            n => n,
        };
        let mut layer_bytes = vec![0u64; usize::try_from(layers).unwrap_or(0)];
        let (mut parameters, mut weights_bytes, mut output_bytes) = (0u64, 0u64, 0u64);
        let mut matrices = Vec::new();
        for t in &header.tensors {
            // A type this reader does not know: its share of the data section, by offsets, is
            // not worth the complexity; count it at one byte per element (the smallest types
            // llama.cpp serves are above 1.5 bits, the unknown ones newer quantizations).
            let bytes = t.bytes().unwrap_or_else(|| t.elements());
            parameters += t.elements();
            weights_bytes += bytes;
            if t.name == "output.weight" {
                output_bytes = bytes;
            }
            let block = t.name.strip_prefix("blk.").and_then(|r| r.split('.').next()?.parse::<usize>().ok());
            if let Some(slot) = block.and_then(|i| layer_bytes.get_mut(i)) {
                *slot += bytes;
            }
            if t.shape.len() == 2 {
                matrices.push(Matrix {
                    type_id: t.type_id,
                    rows: t.shape[1],
                    bytes,
                    layer: block.map(|b| b as u64),
                    embeddings: t.name == "token_embd.weight",
                });
            }
        }
        Ok(Self {
            architecture: arch.clone(),
            parameters,
            weights_bytes,
            layer_bytes,
            output_bytes,
            layers,
            embedding,
            heads,
            kv_heads,
            key_length,
            value_length,
            feed_forward,
            vocab,
            merges: array_len("tokenizer.ggml.merges"),
            trained_context: header.arch_u64("context_length").unwrap_or(0),
            matrices,
        })
    }

    /// Bytes of one KV cell (one token of one slot): f16 K and V over every layer.
    pub fn kv_bytes_per_cell(&self) -> u64 {
        self.layers * self.kv_heads * (self.key_length + self.value_length) * 2
    }

    /// Bytes of weights llama.cpp offloads with `gpu_layers` (the last layers first; the output
    /// matrix too once every block is offloaded, as llama.cpp does).
    pub fn offloaded_bytes(&self, gpu_layers: u64) -> u64 {
        let n = self.layer_bytes.len();
        let k = usize::try_from(gpu_layers).unwrap_or(usize::MAX).min(n);
        let blocks: u64 = self.layer_bytes[n - k..].iter().sum();
        blocks + if gpu_layers > self.layers { self.output_bytes } else { 0 }
    }

    /// Bytes of the matrices `cpu` repacks, of those left on the CPU with `gpu_layers`
    /// offloaded.
    pub fn repacked_bytes(&self, cpu: CpuKind, gpu_layers: u64) -> u64 {
        let first_offloaded = self.layers.saturating_sub(gpu_layers);
        self.matrices
            .iter()
            .filter(|m| !m.embeddings && cpu.repacks(m.type_id, m.rows))
            .filter(|m| match m.layer {
                Some(layer) => layer < first_offloaded,
                // The output matrix goes to the GPU once every block has.
                None => gpu_layers <= self.layers,
            })
            .map(|m| m.bytes)
            .sum()
    }
}

/// The configuration the estimate depends on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    /// `model.context`: tokens per slot.
    pub context: u64,
    /// `api.parallel`: slots.
    pub parallel: u64,
    /// `model.batch`.
    pub batch: u64,
    /// `model.gpu_layers` (0 on a board without a GPU llama.cpp uses).
    pub gpu_layers: u64,
    /// Flash attention in effect (`model.flash_attention`, `auto` counted as on).
    pub flash_attention: bool,
    /// `router.onnx`'s size when the router is enabled, else `None`.
    pub router_model_bytes: Option<u64>,
    /// `cache.max_entries` when the cache is enabled, else `None`.
    pub cache_entries: Option<u64>,
    /// The CPU class, for repacking.
    pub cpu: CpuKind,
}

/// One part of the estimate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Part {
    /// Short name (`weights`, `kv_cache`, ...).
    pub name: &'static str,
    /// Bytes.
    pub bytes: u64,
    /// How it was computed.
    pub detail: String,
    /// Clean page cache the kernel can take back under pressure (resident, so in the peak
    /// RSS, but not memory the board must have free).
    pub reclaimable: bool,
}

fn pad(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB as f64)
}

/// The process's parts for `model` under `settings`; `unified` says GPU-offloaded weights come
/// from the same memory (listed as their own part).
pub fn parts(model: &ModelFacts, s: &Settings, unified: bool) -> Vec<Part> {
    let mut parts = Vec::new();
    let offloaded = if unified { model.offloaded_bytes(s.gpu_layers) } else { 0 };
    parts.push(Part {
        name: "weights",
        bytes: model.weights_bytes - offloaded,
        detail: format!("{} parameters, tensor data of the GGUF", model.parameters),
        reclaimable: false,
    });
    let repacked = model.repacked_bytes(s.cpu, if unified { s.gpu_layers } else { 0 });
    if repacked > 0 {
        parts.push(Part {
            name: "repacked_pages",
            bytes: repacked,
            detail: format!("file pages of the matrices repacked for {:?}; reclaimable", s.cpu),
            reclaimable: true,
        });
    }
    if offloaded > 0 {
        parts.push(Part {
            name: "weights_gpu",
            bytes: offloaded,
            detail: format!("{} layers offloaded; unified memory: same DRAM", s.gpu_layers.min(model.layers)),
            reclaimable: false,
        });
    }
    let cells = pad(s.context, KV_PAD) * s.parallel;
    parts.push(Part {
        name: "kv_cache",
        bytes: cells * model.kv_bytes_per_cell(),
        detail: format!(
            "{cells} cells ({} × {} slots) × {} layers × {} KV heads × ({}+{}) × f16",
            s.context, s.parallel, model.layers, model.kv_heads, model.key_length, model.value_length
        ),
        reclaimable: false,
    });
    parts.push(Part {
        name: "compute",
        bytes: compute_bytes(model, s),
        detail: compute_detail(s),
        reclaimable: false,
    });
    let runtime = RUNTIME_BASE + model.vocab * PER_VOCAB_ENTRY + model.merges * PER_MERGE;
    parts.push(Part {
        name: "runtime",
        bytes: runtime,
        detail: format!(
            "process {} + vocabulary of {} tokens, {} merges",
            mib(RUNTIME_BASE),
            model.vocab,
            model.merges
        ),
        reclaimable: false,
    });
    if let Some(onnx) = s.router_model_bytes {
        parts.push(Part {
            name: "router",
            bytes: onnx + ROUTER_OVERHEAD,
            detail: format!("router.onnx {} + ONNX Runtime {}", mib(onnx), mib(ROUTER_OVERHEAD)),
            reclaimable: false,
        });
    }
    if let Some(entries) = s.cache_entries {
        parts.push(Part {
            name: "response_cache",
            bytes: entries * CACHE_PER_ENTRY + CACHE_SQLITE,
            detail: format!(
                "index of up to {entries} entries × {CACHE_PER_ENTRY} B + SQLite {}",
                mib(CACHE_SQLITE)
            ),
            reclaimable: false,
        });
    }
    parts
}

/// llama.cpp's activations for one micro-batch at a full context (see the module doc).
pub fn compute_bytes(model: &ModelFacts, s: &Settings) -> u64 {
    let ubatch = s.batch.max(s.parallel).min(MAX_UBATCH);
    let n_kv = pad(s.context, KV_PAD);
    let feed_forward = 2 * ubatch * model.feed_forward * 4;
    // The quantized copy of the feed-forward's input (q8: ~1.1 bytes per value).
    let ffn_work = ubatch * model.feed_forward * 11 / 10;
    let (graph, work) = if s.flash_attention {
        // Flash attention never materializes the scores: one output row per head and token.
        (feed_forward.max(ubatch * model.heads * model.value_length * 4), ffn_work)
    } else {
        // Scores in f32 in the graph; the CPU backend's f16 copy of them for the product with V.
        let scores = ubatch * n_kv * model.heads;
        (feed_forward.max(4 * scores), ffn_work.max(2 * scores))
    };
    let stream = 4 * ubatch * model.embedding * 4;
    let logits = 2 * s.parallel * model.vocab * 4;
    graph + work + stream + logits
}

fn compute_detail(s: &Settings) -> String {
    let ubatch = s.batch.max(s.parallel).min(MAX_UBATCH);
    let attention = if s.flash_attention { "flash attention" } else { "attention scores over the context" };
    format!("micro-batch of {ubatch} tokens: {attention}, feed-forward, logits of {} slots", s.parallel)
}

/// Sum of the parts' bytes (the peak RSS).
pub fn sum(parts: &[Part]) -> u64 {
    parts.iter().map(|p| p.bytes).sum()
}

/// Sum of the parts that are not reclaimable (the memory that must be free).
pub fn demand(parts: &[Part]) -> u64 {
    parts.iter().filter(|p| !p.reclaimable).map(|p| p.bytes).sum()
}

/// The largest context per slot (a multiple of 256, at most `ceiling`) whose process parts
/// stay within `budget` bytes — all of them, or with `reclaimable` false only those that are
/// not; 0 if not even 256 tokens do.
pub fn max_context(
    model: &ModelFacts,
    s: &Settings,
    unified: bool,
    budget: u64,
    ceiling: u64,
    reclaimable: bool,
) -> u64 {
    let fits = |context: u64| {
        let trial = Settings { context, batch: s.batch.min(context), ..s.clone() };
        let p = parts(model, &trial, unified);
        (if reclaimable { sum(&p) } else { demand(&p) }) <= budget
    };
    let (mut lo, mut hi) = (0u64, ceiling / KV_PAD);
    if hi == 0 || !fits(KV_PAD) {
        return 0;
    }
    // Invariant: lo × 256 fits (or lo = 0), (hi + 1) × 256 does not or exceeds the ceiling.
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid * KV_PAD) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo * KV_PAD
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// SmolLM2-135M's dimensions (30 layers, 576 wide, 9 heads / 3 KV heads, 49,152 tokens).
    fn smollm2() -> ModelFacts {
        ModelFacts {
            architecture: "llama".into(),
            parameters: 134_515_008,
            weights_bytes: 98_000_000,
            layer_bytes: vec![3_000_000; 30],
            output_bytes: 0,
            layers: 30,
            embedding: 576,
            heads: 9,
            kv_heads: 3,
            key_length: 64,
            value_length: 64,
            feed_forward: 1536,
            vocab: 49_152,
            merges: 48_900,
            trained_context: 8192,
            matrices: Vec::new(),
        }
    }

    fn settings(context: u64, parallel: u64) -> Settings {
        Settings {
            context,
            parallel,
            batch: 512,
            gpu_layers: 0,
            flash_attention: false,
            router_model_bytes: None,
            cache_entries: None,
            cpu: CpuKind::Other,
        }
    }

    fn part(parts: &[Part], name: &str) -> u64 {
        parts.iter().find(|p| p.name == name).map(|p| p.bytes).unwrap()
    }

    #[test]
    fn kv_cache_is_cells_times_layers_heads_and_f16() {
        let m = smollm2();
        // 30 layers × 3 KV heads × (64 + 64) × 2 bytes = 23,040 bytes per cell.
        assert_eq!(m.kv_bytes_per_cell(), 23_040);
        let p = parts(&m, &settings(4096, 2), false);
        assert_eq!(part(&p, "kv_cache"), 4096 * 2 * 23_040);
        // Padded to 256 cells per slot.
        let p = parts(&m, &settings(1000, 1), false);
        assert_eq!(part(&p, "kv_cache"), 1024 * 23_040);
    }

    #[test]
    fn compute_scales_with_context_without_flash_attention() {
        let m = smollm2();
        let small = compute_bytes(&m, &settings(1024, 1));
        let large = compute_bytes(&m, &settings(4096, 1));
        // The scores: 512 tokens × 3072 more cells × 9 heads × 6 bytes.
        assert_eq!(large - small, 512 * 3072 * 9 * 6);
        let fa = compute_bytes(&m, &Settings { flash_attention: true, ..settings(4096, 1) });
        assert!(fa < small, "flash attention keeps no scores: {fa} vs {small}");
        // Batches above 512 run in micro-batches of 512.
        assert_eq!(compute_bytes(&m, &Settings { batch: 2048, ..settings(4096, 1) }), large);
    }

    #[test]
    fn router_cache_and_offload_are_separate_parts() {
        let m = smollm2();
        let s = Settings {
            gpu_layers: 10,
            router_model_bytes: Some(23_525_960),
            cache_entries: Some(100_000),
            ..settings(2048, 1)
        };
        let p = parts(&m, &s, true);
        assert_eq!(part(&p, "weights_gpu"), 10 * 3_000_000);
        assert_eq!(part(&p, "weights") + part(&p, "weights_gpu"), m.weights_bytes);
        assert_eq!(part(&p, "router"), 23_525_960 + ROUTER_OVERHEAD);
        assert_eq!(part(&p, "response_cache"), 49_000_000 + CACHE_SQLITE);
        // Not unified (a Pi): offloading does not apply; all weights are on the CPU.
        let p = parts(&m, &s, false);
        assert_eq!(part(&p, "weights"), m.weights_bytes);
        assert!(p.iter().all(|p| p.name != "weights_gpu"));
        // Every block plus one offloads the output matrix as well.
        let tied_out = ModelFacts { output_bytes: 5, ..smollm2() };
        assert_eq!(tied_out.offloaded_bytes(31), 30 * 3_000_000 + 5);
        assert_eq!(tied_out.offloaded_bytes(30), 30 * 3_000_000);
    }

    #[test]
    fn repacked_matrices_are_a_reclaimable_part_on_the_cpu_only() {
        let matrix =
            |type_id, layer, embeddings| Matrix { type_id, rows: 576, bytes: 1000, layer, embeddings };
        let m = ModelFacts {
            matrices: vec![
                matrix(12, None, true),      // q4_K token embeddings: looked up, never repacked
                matrix(12, Some(0), false),  // q4_K: repacked on x86 and Arm
                matrix(14, Some(29), false), // q6_K: Arm only
                matrix(8, None, false),      // q8_0 output: Arm only
            ],
            ..smollm2()
        };
        assert_eq!(m.repacked_bytes(CpuKind::X86Avx2, 0), 1000);
        assert_eq!(m.repacked_bytes(CpuKind::ArmDotprod, 0), 3000);
        // Offloading the last layer takes its matrix off the CPU; all 31 take the output too.
        assert_eq!(m.repacked_bytes(CpuKind::ArmDotprod, 1), 2000);
        assert_eq!(m.repacked_bytes(CpuKind::ArmDotprod, 31), 0);
        let s = Settings { cpu: CpuKind::ArmDotprod, ..settings(1024, 1) };
        let p = parts(&m, &s, false);
        let repacked = p.iter().find(|p| p.name == "repacked_pages").unwrap();
        assert!(repacked.reclaimable && repacked.bytes == 3000);
        assert_eq!(sum(&p) - demand(&p), 3000);
        assert!(parts(&m, &settings(1024, 1), false).iter().all(|p| p.name != "repacked_pages"));
    }

    #[test]
    fn max_context_is_the_largest_multiple_of_256_within_budget() {
        let m = smollm2();
        let s = settings(4096, 2);
        let budget = sum(&parts(&m, &settings(3000, 2), false));
        let best = max_context(&m, &s, false, budget, 8192, true);
        // 3000 pads to 3072 cells, which is what the budget was computed from.
        assert_eq!(best, 3072);
        assert!(sum(&parts(&m, &settings(best + 256, 2), false)) > budget);
        assert_eq!(max_context(&m, &s, false, budget, 2048, true), 2048, "capped by the ceiling");
        assert_eq!(max_context(&m, &s, false, 1, 8192, true), 0, "nothing fits");
    }
}
