//! The process-wide llama.cpp backend, initialised once.

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::{LlamaCppError, LogOptions};

static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();

/// The llama.cpp backend, initialised on first use. llama.cpp's own log lines go to `tracing`
/// (target `llama-cpp-2`), so `RUST_LOG=llama-cpp-2=debug` shows them.
pub fn backend() -> &'static LlamaBackend {
    BACKEND.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(LogOptions::default());
        match LlamaBackend::init() {
            Ok(backend) => backend,
            // Another part of the process (e.g. the model synthesizer) initialised the C
            // library already; the marker type carries no state, and this one is never dropped.
            Err(LlamaCppError::BackendAlreadyInitialized) | Err(_) => LlamaBackend {},
        }
    })
}
