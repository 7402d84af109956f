//! The cloud LLM: an OpenAI-compatible HTTPS client with timeouts, retries, a circuit breaker,
//! and an active probe; together they say whether the cloud is reachable.
//!
//! (Interface fixed; the body is filled in by the cloud work.)

use std::path::PathBuf;

use serde::Deserialize;

/// `[cloud]`: the cloud endpoint. No `url`: no cloud.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Base URL of an OpenAI-compatible API, e.g. `https://api.openai.com/v1`.
    pub url: Option<String>,
    /// The model to ask for.
    pub model: String,
    /// A file holding the API key (systemd credentials: `%d/cloud-key`).
    pub api_key_file: Option<PathBuf>,
}

impl CloudConfig {
    /// Checks ranges and consistency; errors name the key inside the section.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        Ok(())
    }
}
