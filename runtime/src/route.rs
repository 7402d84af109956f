//! `outpost route`: the routing decision for prompts, without serving them — the router's
//! complexity and the policy's route and reasons under the configured policy and the signals
//! as they are now (battery read from sysfs, the cloud probed once).
//!
//! The prompt's token count under the local model is not known here (the model is not loaded),
//! so the context-length rule only applies in the daemon.

use std::io::{BufRead, Write};

use serde::Serialize;
use serde_json::Value;

use crate::cloud::Connectivity;
use crate::config::Config;
use crate::policy::{self, Inputs, RequestOptions};
use crate::power::PowerState;
use crate::router::{RouterError, RouterModel};

/// One output line.
#[derive(Debug, Serialize)]
pub struct Line {
    /// The router's complexity.
    pub complexity: f32,
    /// `local`, `cloud`, `cache` or `refuse`.
    pub route: policy::Route,
    /// Why.
    pub reasons: Vec<String>,
}

/// Why routing could not run.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The router did not load or failed.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The cloud client could not be set up.
    #[error(transparent)]
    Cloud(#[from] crate::cloud::CloudError),
    /// Reading stdin or writing stdout failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The signals and router, loaded once for many prompts.
pub struct Routing {
    model: RouterModel,
    config: Config,
    power: PowerState,
    connectivity: Connectivity,
}

impl Routing {
    /// Loads the router and reads the signals.
    pub async fn new(config: Config) -> Result<Self, RouteError> {
        let model = RouterModel::load(&config.router)?;
        let power = crate::power::read(&config.power.supply_root).unwrap_or(PowerState::MAINS);
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let cloud = crate::cloud::Cloud::new(&config.cloud, metrics)?;
        let connectivity = if cloud.is_configured() { cloud.probe_now().await } else { cloud.connectivity() };
        Ok(Self { model, config, power, connectivity })
    }

    /// Decides one prompt.
    pub fn decide(&mut self, prompt: &str, options: RequestOptions) -> Result<Line, RouterError> {
        let score = self.model.score(prompt)?;
        let inputs = Inputs {
            complexity: Some(score.complexity),
            prompt_tokens: None,
            local_context: self.config.model.context,
            max_tokens: self.config.generation.max_tokens,
            power: self.power,
            connectivity: self.connectivity,
            request: options,
        };
        let d = policy::decide(
            &inputs,
            &self.config.policy,
            &self.config.power,
            self.model.manifest().default_threshold,
        );
        Ok(Line { complexity: score.complexity, route: d.route, reasons: d.reasons })
    }

    /// `--jsonl`: one object with a `prompt` (and optional `outpost` options) per input line,
    /// one result per line, in order. A bad line gets an `{"error": ...}` line and the rest go
    /// on; returns how many lines failed.
    pub fn jsonl(&mut self, input: impl BufRead, mut out: impl Write) -> Result<usize, RouteError> {
        let mut failed = 0;
        for (n, line) in input.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let result = serde_json::from_str::<Value>(&line)
                .map_err(|e| format!("line {}: not JSON: {e}", n + 1))
                .and_then(|v| {
                    let prompt = v
                        .get("prompt")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("line {}: no string field `prompt`", n + 1))?
                        .to_owned();
                    let options = match v.get("outpost") {
                        Some(o) => serde_json::from_value(o.clone())
                            .map_err(|e| format!("line {}: `outpost`: {e}", n + 1))?,
                        None => RequestOptions::default(),
                    };
                    self.decide(&prompt, options).map_err(|e| format!("line {}: {e}", n + 1))
                });
            let text = match result {
                Ok(line) => serde_json::to_string(&line).unwrap_or_default(),
                Err(error) => {
                    failed += 1;
                    serde_json::json!({ "error": error }).to_string()
                }
            };
            writeln!(out, "{text}")?;
        }
        out.flush()?;
        Ok(failed)
    }
}
