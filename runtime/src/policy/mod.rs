//! The routing policy: a pure function from the signals of one request to a decision with
//! reasons. No I/O, no clock: everything it looks at is in [`Inputs`].
//!
//! (Interface fixed; the body is filled in by the policy work.)

use serde::{Deserialize, Serialize};

use crate::power::PowerConfig;
use crate::signals::{Connectivity, PowerMode, PowerState};

/// `[policy]`: how requests are routed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// `allow-cloud` (default) or `local-only` (no prompt ever leaves the board).
    pub privacy: Privacy,
    /// Complexity at or above which a request goes to the cloud (in high power mode). Unset:
    /// the router's recommended threshold (`default_threshold` in its `router.json`).
    pub complexity_threshold: Option<f32>,
    /// Local answers less confident than this are answered by the cloud instead (cascade).
    pub min_confidence: f32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self { privacy: Privacy::AllowCloud, complexity_threshold: None, min_confidence: 0.5 }
    }
}

/// `policy.privacy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Privacy {
    /// Prompts may be sent to the cloud.
    AllowCloud,
    /// Prompts never leave the board.
    LocalOnly,
}

/// Where a request is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// The local model.
    Local,
    /// The cloud model.
    Cloud,
    /// The offline response cache.
    Cache,
    /// Nowhere: the request cannot be served under the policy.
    Refuse,
}

/// A per-request route override (`"outpost": {"route": ...}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteOverride {
    /// Let the policy decide.
    Auto,
    /// Answer locally.
    Local,
    /// Answer in the cloud.
    Cloud,
}

/// What a request asks of routing (`"outpost": {...}` in the body).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestOptions {
    /// `false`: this request must not leave the board.
    pub allow_cloud: Option<bool>,
    /// Force a route.
    pub route: Option<RouteOverride>,
}

/// Everything one decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Inputs {
    /// The router's complexity (probability the local model fails); `None` if the router
    /// failed or is disabled.
    pub complexity: Option<f32>,
    /// Prompt tokens under the local model's template; `None` until the engine has counted.
    pub prompt_tokens: Option<u32>,
    /// The local context window.
    pub local_context: u32,
    /// Tokens the request asks to generate at most.
    pub max_tokens: u32,
    /// The power signal.
    pub power: PowerState,
    /// The cloud's reachability.
    pub connectivity: Connectivity,
    /// The request's own options.
    pub request: RequestOptions,
}

/// Limits applied to a local answer under the power mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LocalLimits {
    /// llama.cpp threads for this request; `None` = the configured `model.threads`.
    pub threads: Option<u32>,
    /// Tokens generated at most.
    pub max_tokens: u32,
}

/// Why a request cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The prompt is over the local context and the cloud may not (or cannot) take it.
    ContextTooLong,
    /// The request forced the cloud but the cloud is not allowed or not reachable.
    CloudUnavailable,
}

/// The decision, with its reasons (human-readable, stable prefixes).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Where to answer.
    pub route: Route,
    /// Why, in order of weight.
    pub reasons: Vec<String>,
    /// Set when `route` is `Refuse`.
    pub refusal: Option<Refusal>,
    /// The power mode in force.
    pub power_mode: PowerMode,
    /// The complexity threshold after the power mode's shift.
    pub threshold: f32,
    /// May the cloud answer this request (for cascade and fallback)?
    pub cloud_allowed: bool,
    /// Limits for a local answer.
    pub limits: LocalLimits,
}

/// Decides one request.
pub fn decide(
    inputs: &Inputs,
    config: &PolicyConfig,
    power: &PowerConfig,
    router_threshold: f32,
) -> Decision {
    let _ = (inputs, config, power, router_threshold);
    unimplemented!("filled in by the policy work")
}

impl PolicyConfig {
    /// Checks ranges and consistency; errors name the key inside the section.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        Ok(())
    }
}
