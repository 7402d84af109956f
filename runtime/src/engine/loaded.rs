//! A loaded model: the llama.cpp model, its context (which borrows the model), the chat template
//! to use, and the identity the API reports.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use serde::Serialize;

use super::jinja::{self, JinjaTemplate};
use super::{backend, LoadError};
use crate::config::{Config, FlashAttention};

/// The template used when the GGUF carries none that llama.cpp can apply.
pub const DEFAULT_CHAT_TEMPLATE: &str = "chatml";

/// What loading needs from the configuration.
#[derive(Debug)]
pub(crate) struct LoadSettings {
    path: PathBuf,
    /// Tokens of context per slot (`model.context`).
    pub(crate) context: u32,
    pub(crate) threads: i32,
    batch: u32,
    /// Sequences in the context (`api.parallel`).
    pub(crate) parallel: u32,
    gpu_layers: u32,
    flash_attention: FlashAttention,
    chat_template: Option<String>,
}

impl LoadSettings {
    /// Tokens in one batch: `model.batch`, and at least one per slot.
    pub(crate) fn batch_tokens(&self) -> usize {
        self.batch.max(self.parallel) as usize
    }

    pub(crate) fn from_config(config: &Config) -> Self {
        let m = &config.model;
        Self {
            path: m.path.clone(),
            context: m.context,
            threads: i32::try_from(m.threads).unwrap_or(4),
            batch: m.batch,
            parallel: config.api.parallel(),
            gpu_layers: m.gpu_layers,
            flash_attention: m.flash_attention(),
            chat_template: m.chat_template.clone(),
        }
    }
}

/// The identity of the model being served, as `GET /v1/models` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// The model id: the GGUF's `general.name`, else the file name without extension.
    pub id: String,
    /// The configured path (often through the updater's `current` symlink).
    pub path: PathBuf,
    /// The file actually loaded, with symlinks resolved.
    pub file: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// Tensor type, e.g. `Q4_K_M`.
    pub quantization: String,
    /// Architecture, e.g. `llama`, `qwen2`.
    pub architecture: String,
    /// Parameters.
    pub parameters: u64,
    /// The context window served (`model.context`).
    pub context: u32,
    /// The context the model was trained with.
    pub context_train: u32,
    /// Requests generated at once (`api.parallel`), each with `context` tokens of KV cache.
    pub parallel: u32,
    /// KV cache cells (tokens) in all: `context` × `parallel`.
    pub kv_cells: u64,
    /// Bytes of that KV cache (f16 K and V: 2 × layers × KV heads × head size × 2 bytes per
    /// cell).
    pub kv_bytes: u64,
    /// Which chat template renders prompts: `gguf-jinja` (the GGUF's own template, by
    /// minijinja), `config-jinja` (template text from `model.chat_template`, by minijinja),
    /// `gguf` or `config` (llama.cpp's built-in template that the GGUF's template or the
    /// configured name matches), or `chatml` (the default).
    pub chat_template: String,
    /// The release version, from a `manifest.json` beside the model file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The file's SHA-256 as the release manifest declares it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When it was loaded (Unix seconds).
    pub loaded_at: u64,
}

/// The llama.cpp context borrows the model; `self_cell` keeps both in one movable value.
type Context<'a> = LlamaContext<'a>;

self_cell::self_cell!(
    /// A model and its one context.
    pub(crate) struct ModelCell {
        owner: LlamaModel,
        #[not_covariant]
        dependent: Context,
    }
);

/// How prompts are rendered from messages.
pub(crate) enum ChatTemplate {
    /// The Jinja template, compiled by minijinja.
    Jinja(Box<JinjaTemplate>),
    /// One of llama.cpp's built-in templates (chosen by name or by its heuristics on the
    /// template text).
    Builtin(LlamaChatTemplate),
}

/// A model ready to serve.
pub(crate) struct LoadedModel {
    pub(crate) cell: ModelCell,
    pub(crate) template: ChatTemplate,
    pub(crate) info: Arc<ModelInfo>,
    pub(crate) batch: u32,
    /// CPU threads of the current context.
    pub(crate) threads: i32,
}

impl LoadedModel {
    /// Loads the model and creates its context (blocking: call on a loader thread).
    pub(crate) fn load(settings: &LoadSettings) -> Result<Self, LoadError> {
        let configured = settings.path.display().to_string();
        let file = std::fs::canonicalize(&settings.path)
            .map_err(|e| LoadError::Read { path: configured.clone(), reason: e.to_string() })?;
        let size = std::fs::metadata(&file)
            .map_err(|e| LoadError::Read { path: configured.clone(), reason: e.to_string() })?
            .len();
        let shown = file.display().to_string();
        let backend = backend();
        let params = LlamaModelParams::default().with_n_gpu_layers(settings.gpu_layers);
        let model = LlamaModel::load_from_file(backend, &file, &params)
            .map_err(|_| LoadError::Model { path: shown.clone() })?;

        let (template, template_source) = choose_template(&model, settings.chat_template.as_deref());
        let info = ModelInfo {
            id: model_id(&model, &file),
            path: settings.path.clone(),
            size,
            quantization: quantization(&model),
            architecture: model.meta_val_str("general.architecture").unwrap_or_default(),
            parameters: model.n_params(),
            context: settings.context,
            context_train: model.n_ctx_train(),
            parallel: settings.parallel,
            kv_cells: u64::from(settings.context) * u64::from(settings.parallel),
            kv_bytes: kv_bytes_per_cell(&model) * u64::from(settings.context) * u64::from(settings.parallel),
            chat_template: template_source,
            version: None,
            sha256: None,
            loaded_at: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            file: file.clone(),
        };
        let info = with_manifest(info, &file);

        let ctx_params = context_params(settings, settings.threads);
        let cell = ModelCell::try_new(model, |model| model.new_context(backend, ctx_params))
            .map_err(|_| LoadError::Context { path: shown, context: settings.context })?;
        Ok(Self { cell, template, info: Arc::new(info), batch: settings.batch, threads: settings.threads })
    }

    /// Recreates the context with `threads` CPU threads (the power mode asked for fewer or
    /// more). The KV cache is lost. If the new context cannot be made, the model keeps a
    /// context with the old thread count.
    pub(crate) fn with_threads(
        self,
        settings: &LoadSettings,
        threads: i32,
    ) -> Result<Self, (Option<Self>, LoadError)> {
        let Self { cell, template, info, batch, threads: old } = self;
        let model = cell.into_owner();
        let backend = backend();
        let made = ModelCell::try_new_or_recover(model, |m| {
            m.new_context(backend, context_params(settings, threads))
        });
        match made {
            Ok(cell) => Ok(Self { cell, template, info, batch, threads }),
            Err((model, err)) => {
                let error = LoadError::Context {
                    path: format!("{} ({err})", info.file.display()),
                    context: settings.context,
                };
                match ModelCell::try_new(model, |m| m.new_context(backend, context_params(settings, old))) {
                    Ok(cell) => Err((Some(Self { cell, template, info, batch, threads: old }), error)),
                    // Without any context the model cannot serve; the caller drops it.
                    Err(_) => Err((None, error)),
                }
            }
        }
    }
}

/// llama.cpp context parameters for the settings, with `threads` CPU threads.
fn context_params(settings: &LoadSettings, threads: i32) -> LlamaContextParams {
    // One sequence per slot, each with its own `context` tokens of KV cache.
    let batch = u32::try_from(settings.batch_tokens()).unwrap_or(u32::MAX);
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(settings.context.saturating_mul(settings.parallel)))
        .with_n_seq_max(settings.parallel)
        .with_kv_unified(false)
        .with_n_batch(batch)
        .with_n_ubatch(batch.min(512))
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_flash_attention_policy(match settings.flash_attention {
            FlashAttention::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            FlashAttention::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
        })
}

/// Bytes one KV cell takes: K and V, f16, for every layer and KV head.
fn kv_bytes_per_cell(model: &LlamaModel) -> u64 {
    let head = u64::try_from(model.n_embd()).unwrap_or(0) / u64::from(model.n_head().max(1));
    2 * u64::from(model.n_layer()) * u64::from(model.n_head_kv()) * head * 2
}

/// The template prompts are rendered with, and its name for `/v1/models`. In order: the
/// configured one (template text by minijinja, a name or text by llama.cpp), the GGUF's by
/// minijinja, the GGUF's by llama.cpp's built-ins, ChatML.
fn choose_template(model: &LlamaModel, configured: Option<&str>) -> (ChatTemplate, String) {
    let probe = LlamaChatMessage::new("user".into(), "hi".into());
    let builtin = |text: &str| {
        let template = LlamaChatTemplate::new(text).ok()?;
        let m = probe.as_ref().ok()?;
        model.apply_chat_template(&template, std::slice::from_ref(m), true).is_ok().then_some(template)
    };
    let vocab = model.vocab();
    // A model without BOS (or EOS) has -1 there: an empty `bos_token`.
    let special = |t: llama_cpp_2::token::LlamaToken| {
        if t.0 < 0 || t.0 >= model.n_vocab() {
            return String::new();
        }
        String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
    };
    let (bos, eos) = (special(vocab.bos()), special(vocab.eos()));
    let compiled = |text: &str, from: &str| match JinjaTemplate::compile(text, &bos, &eos) {
        Ok(t) => Some(ChatTemplate::Jinja(Box::new(t))),
        Err(err) => {
            tracing::warn!(%err, "minijinja cannot use {from}; trying llama.cpp's built-in templates");
            None
        }
    };
    if let Some(text) = configured {
        if jinja::is_template_text(text) {
            if let Some(t) = compiled(text, "model.chat_template") {
                return (t, "config-jinja".into());
            }
        }
        if let Some(t) = builtin(text) {
            return (ChatTemplate::Builtin(t), "config".into());
        }
        tracing::warn!(
            template = text,
            "model.chat_template is neither a template minijinja renders nor one llama.cpp knows; ignoring it"
        );
    }
    if let Ok(text) = model.chat_template(None).map(|t| t.to_string()) {
        if let Ok(text) = text {
            if let Some(t) = compiled(&text, "the model's chat template") {
                return (t, "gguf-jinja".into());
            }
            if let Some(t) = builtin(&text) {
                return (ChatTemplate::Builtin(t), "gguf".into());
            }
        }
        tracing::warn!(
            "the model's chat template is not one llama.cpp supports; using {DEFAULT_CHAT_TEMPLATE}"
        );
    }
    match builtin(DEFAULT_CHAT_TEMPLATE).or_else(|| LlamaChatTemplate::new(DEFAULT_CHAT_TEMPLATE).ok()) {
        Some(t) => (ChatTemplate::Builtin(t), DEFAULT_CHAT_TEMPLATE.into()),
        // A constant without NUL bytes always converts.
        None => unreachable_template(),
    }
}

#[cold]
fn unreachable_template() -> (ChatTemplate, String) {
    // `LlamaChatTemplate::new` only fails on interior NUL bytes, which the constant lacks.
    panic!("the default chat template name contains a NUL byte")
}

fn model_id(model: &LlamaModel, file: &Path) -> String {
    match model.meta_val_str("general.name") {
        Ok(name) if !name.trim().is_empty() => name.trim().replace(char::is_whitespace, "-"),
        _ => file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()),
    }
}

/// The tensor type named by `general.file_type` (llama.cpp's `llama_ftype`).
fn quantization(model: &LlamaModel) -> String {
    let Ok(value) = model.meta_val_str("general.file_type") else { return "unknown".into() };
    let name = match value.trim().parse::<u32>() {
        Ok(0) => "F32",
        Ok(1) => "F16",
        Ok(2) => "Q4_0",
        Ok(3) => "Q4_1",
        Ok(7) => "Q8_0",
        Ok(8) => "Q5_0",
        Ok(9) => "Q5_1",
        Ok(10) => "Q2_K",
        Ok(11) => "Q3_K_S",
        Ok(12) => "Q3_K_M",
        Ok(13) => "Q3_K_L",
        Ok(14) => "Q4_K_S",
        Ok(15) => "Q4_K_M",
        Ok(16) => "Q5_K_S",
        Ok(17) => "Q5_K_M",
        Ok(18) => "Q6_K",
        Ok(19) => "IQ2_XXS",
        Ok(20) => "IQ2_XS",
        Ok(21) => "Q2_K_S",
        Ok(22) => "IQ3_XS",
        Ok(23) => "IQ3_XXS",
        Ok(24) => "IQ1_S",
        Ok(25) => "IQ4_NL",
        Ok(26) => "IQ3_S",
        Ok(27) => "IQ3_M",
        Ok(28) => "IQ2_S",
        Ok(29) => "IQ2_M",
        Ok(30) => "IQ4_XS",
        Ok(31) => "IQ1_M",
        Ok(32) => "BF16",
        Ok(36) => "TQ1_0",
        Ok(37) => "TQ2_0",
        Ok(38) => "MXFP4_MOE",
        _ => return format!("ftype-{}", value.trim()),
    };
    name.into()
}

/// Adds `version` and `sha256` from a `manifest.json` beside the model file, when there is one.
/// The updater writes it; fields are read leniently (`sha256` at the top or under `target`).
fn with_manifest(mut info: ModelInfo, file: &Path) -> ModelInfo {
    let Some(dir) = file.parent() else { return info };
    let manifest = dir.join("manifest.json");
    let Ok(text) = std::fs::read_to_string(&manifest) else { return info };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) => {
            let signed = value.get("signed").unwrap_or(&value);
            let str_at =
                |v: &serde_json::Value, key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_owned);
            info.version = str_at(signed, "version");
            info.sha256 =
                str_at(signed, "sha256").or_else(|| signed.get("target").and_then(|t| str_at(t, "sha256")));
        }
        Err(err) => tracing::warn!(path = %manifest.display(), %err, "ignoring unreadable manifest.json"),
    }
    info
}
