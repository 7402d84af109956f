//! The routing policy: a pure function from the signals of one request to a decision with
//! reasons. No I/O, no clock: everything it looks at is in [`Inputs`].
//!
//! [`decide`] applies these rules, first match wins. "Cloud allowed" means: `policy.privacy` is
//! not `local-only`, the request did not set `allow_cloud: false`, and the cloud may be called
//! ([`Connectivity::may_call`]: online or not yet known). When it is not, no rule gives
//! [`Route::Cloud`].
//!
//! | # | Condition | Route | First reason (stable prefix) |
//! |---|-----------|-------|------------------------------|
//! | 1 | override `local`, prompt does not fit | Refuse (`ContextTooLong`) | `prompt of N tokens exceeds local context of M` |
//! | 2 | override `local` | Local | `override: ` |
//! | 3 | override `cloud`, cloud not allowed | Refuse (`CloudUnavailable`) | `privacy: ` / `offline: ` / `no cloud: ` |
//! | 4 | override `cloud` | Cloud | `override: ` |
//! | 5 | prompt does not fit, cloud allowed | Cloud | `prompt of N tokens exceeds local context of M` |
//! | 6 | prompt does not fit | Refuse (`ContextTooLong`) | `prompt of N tokens exceeds local context of M` |
//! | 7 | no complexity (router failed or off, or NaN) | Local | `router unavailable: ` |
//! | 8 | complexity ≥ threshold, cloud allowed | Cloud | `complexity C >= threshold T (power mode P)` |
//! | 9 | complexity ≥ threshold | Local | `privacy: ` / `offline: ` / `no cloud: ` |
//! | 10 | complexity < threshold | Local | `complexity C < threshold T (power mode P)` |
//!
//! A prompt *fits* when `prompt_tokens + room <= local_context`, where `room` is
//! `min(limits.max_tokens, MIN_ANSWER_TOKENS)` and at least one token: the engine itself only
//! needs room for one token, but an answer cut off after a handful of tokens is not worth
//! giving when the cloud could answer it. An uncounted prompt (`prompt_tokens: None`) is
//! assumed to fit; the engine still checks.
//!
//! The threshold is `complexity_threshold` (or the router's recommended one) plus the power
//! mode's `threshold_shift`, clamped to [0, 1]; a non-finite base counts as 1 (nothing goes
//! to the cloud on complexity alone). The power mode also sets the local limits: `threads`,
//! and `max_tokens` = the smaller of the request's and the mode's cap.
//!
//! [`Route::Cache`] is never produced here.

use serde::{Deserialize, Deserializer, Serialize};

use crate::cloud::Connectivity;
use crate::power::PowerConfig;
use crate::power::{PowerMode, PowerState};

#[cfg(test)]
mod tests;

/// The fewest answer tokens a prompt must leave room for in the local context (or fewer, if
/// the request asks for fewer) to be answered locally.
pub const MIN_ANSWER_TOKENS: u32 = 16;

/// `[policy]`: how requests are routed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// `allow-cloud` (default) or `local-only` (no prompt ever leaves the board).
    pub privacy: Privacy,
    /// Complexity at or above which a request goes to the cloud (in high power mode, before
    /// `policy.high.threshold_shift`), 0 to 1. Unset: the router's recommended threshold
    /// (`default_threshold` in its `router.json`).
    pub complexity_threshold: Option<f32>,
    /// Local answers less confident than this (0 to 1, see [`crate::cascade`]) are answered by
    /// the cloud instead, when `cascade` is on and the cloud is allowed.
    pub min_confidence: f32,
    /// Check the confidence of local answers and ask the cloud when it is below
    /// `min_confidence` (default on).
    pub cascade: bool,
    /// `[policy.high]`: on mains or charging. Default: no shift, no limits.
    #[serde(deserialize_with = "ModePolicy::deserialize_high")]
    pub high: ModePolicy,
    /// `[policy.balanced]`: on battery above `power.low_battery`. Default: threshold −0.1.
    #[serde(deserialize_with = "ModePolicy::deserialize_balanced")]
    pub balanced: ModePolicy,
    /// `[policy.low]`: on battery at or below `power.low_battery`. Default: threshold −0.25,
    /// 1 thread, at most 256 tokens.
    #[serde(deserialize_with = "ModePolicy::deserialize_low")]
    pub low: ModePolicy,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            privacy: Privacy::AllowCloud,
            complexity_threshold: None,
            min_confidence: 0.5,
            cascade: true,
            high: ModePolicy::HIGH,
            balanced: ModePolicy::BALANCED,
            low: ModePolicy::LOW,
        }
    }
}

/// `[policy.high]`, `[policy.balanced]`, `[policy.low]`: routing and local limits in one power
/// mode. A key left out of a table keeps that mode's default (not another mode's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModePolicy {
    /// Added to the complexity threshold, −1 to 1; negative sends more requests to the cloud.
    /// Must not rise from `high` to `balanced` to `low`.
    pub threshold_shift: f32,
    /// llama.cpp threads for local answers (1 to 256); unset: `model.threads`. There is no
    /// way to unset a mode's default in TOML: set it to `model.threads` instead.
    pub threads: Option<u32>,
    /// Tokens a local answer may generate at most (at least 1); a request asking for more
    /// gets this many. Unset: no cap.
    pub max_tokens: Option<u32>,
}

impl ModePolicy {
    /// `[policy.high]`'s defaults: full local limits.
    pub const HIGH: Self = Self { threshold_shift: 0.0, threads: None, max_tokens: None };
    /// `[policy.balanced]`'s defaults: somewhat more to the cloud.
    pub const BALANCED: Self = Self { threshold_shift: -0.1, threads: None, max_tokens: None };
    /// `[policy.low]`'s defaults: much more to the cloud, and local answers short and on one
    /// core (the lowest peak draw on a nearly empty battery).
    pub const LOW: Self = Self { threshold_shift: -0.25, threads: Some(1), max_tokens: Some(256) };

    fn deserialize_over<'de, D: Deserializer<'de>>(defaults: Self, d: D) -> Result<Self, D::Error> {
        /// The keys a table sets; the others keep the mode's defaults.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            threshold_shift: Option<f32>,
            threads: Option<u32>,
            max_tokens: Option<u32>,
        }
        let t = Table::deserialize(d)?;
        Ok(Self {
            threshold_shift: t.threshold_shift.unwrap_or(defaults.threshold_shift),
            threads: t.threads.or(defaults.threads),
            max_tokens: t.max_tokens.or(defaults.max_tokens),
        })
    }

    fn deserialize_high<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::deserialize_over(Self::HIGH, d)
    }

    fn deserialize_balanced<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::deserialize_over(Self::BALANCED, d)
    }

    fn deserialize_low<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::deserialize_over(Self::LOW, d)
    }

    fn validate(&self, keys: [&'static str; 3]) -> Result<(), (&'static str, String)> {
        let [shift, threads, max_tokens] = keys;
        if !(-1.0..=1.0).contains(&self.threshold_shift) {
            return Err((shift, format!("must be between -1 and 1 (got {})", self.threshold_shift)));
        }
        if let Some(n) = self.threads.filter(|n| !(1..=256).contains(n)) {
            return Err((threads, format!("must be between 1 and 256 (got {n})")));
        }
        if self.max_tokens == Some(0) {
            return Err((max_tokens, "must be at least 1".into()));
        }
        Ok(())
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

impl Route {
    /// The route's name, as in the `x-outpost-route` header and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Cloud => "cloud",
            Self::Cache => "cache",
            Self::Refuse => "refuse",
        }
    }
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
    /// llama.cpp threads for this request; `None` = the configured `model.threads`. The engine
    /// should not go above `model.threads`.
    pub threads: Option<u32>,
    /// Tokens generated at most: the request's `max_tokens`, capped by the power mode's.
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
    /// Check the local answer's confidence and ask the cloud below `policy.min_confidence`:
    /// the route is local by the policy's choice (not forced by the request), `policy.cascade`
    /// is on, and the cloud is allowed.
    pub cascade: bool,
    /// Limits for a local answer.
    pub limits: LocalLimits,
}

/// Why the cloud may not answer a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoCloud {
    /// `policy.privacy = "local-only"`.
    PrivacyConfig,
    /// The request set `allow_cloud: false`.
    PrivacyRequest,
    /// No `[cloud] url`.
    NotConfigured,
    /// The cloud cannot be reached.
    Offline,
}

impl NoCloud {
    /// The first that applies, privacy before reachability (privacy would still hold if the
    /// cloud came back).
    fn of(inputs: &Inputs, config: &PolicyConfig) -> Option<Self> {
        if config.privacy == Privacy::LocalOnly {
            Some(Self::PrivacyConfig)
        } else if inputs.request.allow_cloud == Some(false) {
            Some(Self::PrivacyRequest)
        } else if inputs.connectivity == Connectivity::NotConfigured {
            Some(Self::NotConfigured)
        } else if !inputs.connectivity.may_call() {
            Some(Self::Offline)
        } else {
            None
        }
    }

    fn reason(self) -> String {
        match self {
            Self::PrivacyConfig => "privacy: policy.privacy is local-only".into(),
            Self::PrivacyRequest => "privacy: the request set allow_cloud=false".into(),
            Self::NotConfigured => "no cloud: no [cloud] url is configured".into(),
            Self::Offline => "offline: the cloud cannot be reached".into(),
        }
    }
}

impl PolicyConfig {
    /// The policy of one power mode.
    pub fn mode(&self, mode: PowerMode) -> &ModePolicy {
        match mode {
            PowerMode::High => &self.high,
            PowerMode::Balanced => &self.balanced,
            PowerMode::Low => &self.low,
        }
    }

    /// The complexity threshold in a power mode: the configured (else the router's) threshold
    /// plus the mode's shift, clamped to [0, 1]; a non-finite base counts as 1.
    pub fn threshold(&self, mode: PowerMode, router_threshold: f32) -> f32 {
        let base = self.complexity_threshold.unwrap_or(router_threshold);
        let base = if base.is_finite() { base } else { 1.0 };
        let shifted = base + self.mode(mode).threshold_shift;
        if shifted.is_finite() {
            shifted.clamp(0.0, 1.0)
        } else {
            1.0
        }
    }
}

/// Decides one request (see the module documentation for the rules).
pub fn decide(
    inputs: &Inputs,
    config: &PolicyConfig,
    power: &PowerConfig,
    router_threshold: f32,
) -> Decision {
    let power_mode = power.mode(&inputs.power);
    let mode = config.mode(power_mode);
    let threshold = config.threshold(power_mode, router_threshold);
    let limits = LocalLimits {
        threads: mode.threads,
        max_tokens: mode.max_tokens.map_or(inputs.max_tokens, |cap| cap.min(inputs.max_tokens)),
    };
    let no_cloud = NoCloud::of(inputs, config);
    let cloud_allowed = no_cloud.is_none();
    let too_long = inputs.prompt_tokens.filter(|&n| {
        let room = limits.max_tokens.clamp(1, MIN_ANSWER_TOKENS);
        u64::from(n) + u64::from(room) > u64::from(inputs.local_context)
    });
    let too_long_reason =
        |n: u32| format!("prompt of {n} tokens exceeds local context of {}", inputs.local_context);

    let (route, refusal, reasons) = match inputs.request.route {
        Some(RouteOverride::Local) => match too_long {
            Some(n) => (
                Route::Refuse,
                Some(Refusal::ContextTooLong),
                vec![too_long_reason(n), "override: the request forced the local route".into()],
            ),
            None => (Route::Local, None, vec!["override: the request forced the local route".into()]),
        },
        Some(RouteOverride::Cloud) => match no_cloud {
            Some(why) => (
                Route::Refuse,
                Some(Refusal::CloudUnavailable),
                vec![why.reason(), "override: the request forced the cloud route".into()],
            ),
            None => (Route::Cloud, None, vec!["override: the request forced the cloud route".into()]),
        },
        Some(RouteOverride::Auto) | None => match (too_long, no_cloud) {
            (Some(n), None) => (Route::Cloud, None, vec![too_long_reason(n)]),
            (Some(n), Some(why)) => {
                (Route::Refuse, Some(Refusal::ContextTooLong), vec![too_long_reason(n), why.reason()])
            }
            (None, _) => by_complexity(inputs.complexity, threshold, power_mode, no_cloud),
        },
    };
    let cascade = config.cascade
        && cloud_allowed
        && route == Route::Local
        && inputs.request.route != Some(RouteOverride::Local);
    Decision { route, reasons, refusal, power_mode, threshold, cloud_allowed, cascade, limits }
}

/// Rules 7 to 10: a prompt that fits, with no override.
fn by_complexity(
    complexity: Option<f32>,
    threshold: f32,
    power_mode: PowerMode,
    no_cloud: Option<NoCloud>,
) -> (Route, Option<Refusal>, Vec<String>) {
    let mode = match power_mode {
        PowerMode::High => "high",
        PowerMode::Balanced => "balanced",
        PowerMode::Low => "low",
    };
    let Some(c) = complexity.filter(|c| !c.is_nan()).map(|c| c.clamp(0.0, 1.0)) else {
        let why = match complexity {
            Some(_) => "router unavailable: the complexity score is not a number; answering locally",
            None => "router unavailable: no complexity score; answering locally",
        };
        return (Route::Local, None, vec![why.into()]);
    };
    if c < threshold {
        return (
            Route::Local,
            None,
            vec![format!("complexity {c:.2} < threshold {threshold:.2} (power mode {mode})")],
        );
    }
    let because = format!("complexity {c:.2} >= threshold {threshold:.2} (power mode {mode})");
    match no_cloud {
        None => (Route::Cloud, None, vec![because]),
        Some(why) => (Route::Local, None, vec![why.reason(), because]),
    }
}

impl PolicyConfig {
    /// Checks ranges and consistency; errors name the key inside the section.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(t) = self.complexity_threshold.filter(|t| !(0.0..=1.0).contains(t)) {
            return Err(("complexity_threshold", format!("must be between 0 and 1 (got {t})")));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(("min_confidence", format!("must be between 0 and 1 (got {})", self.min_confidence)));
        }
        self.high.validate(["high.threshold_shift", "high.threads", "high.max_tokens"])?;
        self.balanced.validate(["balanced.threshold_shift", "balanced.threads", "balanced.max_tokens"])?;
        self.low.validate(["low.threshold_shift", "low.threads", "low.max_tokens"])?;
        if self.balanced.threshold_shift > self.high.threshold_shift {
            return Err((
                "balanced.threshold_shift",
                format!(
                    "must not be above high.threshold_shift ({} > {}): a lower power mode never keeps \
                     more requests local",
                    self.balanced.threshold_shift, self.high.threshold_shift
                ),
            ));
        }
        if self.low.threshold_shift > self.balanced.threshold_shift {
            return Err((
                "low.threshold_shift",
                format!(
                    "must not be above balanced.threshold_shift ({} > {}): a lower power mode never \
                     keeps more requests local",
                    self.low.threshold_shift, self.balanced.threshold_shift
                ),
            ));
        }
        Ok(())
    }
}
