//! `[router]`: which router model scores prompts and how it runs.

use std::path::PathBuf;

use serde::Deserialize;

/// `[router]`. With no section at all, the router shipped with Outpost is used (see
/// [`super::locate`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// A directory holding `router.onnx`, `tokenizer.json` and `router.json`. Unset: the
    /// shipped router (`$OUTPOST_ROUTER_DIR`, `/usr/share/outpost/router`, or the source tree's
    /// `runtime/router` for development builds).
    pub dir: Option<PathBuf>,
    /// ONNX Runtime's shared library (`libonnxruntime.so`). Unset: `$ORT_DYLIB_PATH`, then
    /// `/usr/lib/outpost/libonnxruntime.so`, then the copy `scripts/setup.sh` puts in the source
    /// tree.
    pub onnxruntime: Option<PathBuf>,
    /// Threads ONNX Runtime uses per prompt (1 leaves the other cores to llama.cpp).
    pub threads: u32,
    /// Prompts waiting for the router; more are routed without a score.
    pub queue: usize,
    /// `false`: no router; every request is routed as if its complexity were unknown.
    pub enabled: bool,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self { dir: None, onnxruntime: None, threads: 1, queue: 64, enabled: true }
    }
}

impl RouterConfig {
    /// Checks ranges; the files themselves are checked when the router loads.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=64).contains(&self.threads) {
            return Err(("threads", format!("must be between 1 and 64 (got {})", self.threads)));
        }
        if !(1..=4096).contains(&self.queue) {
            return Err(("queue", format!("must be between 1 and 4096 (got {})", self.queue)));
        }
        Ok(())
    }
}
