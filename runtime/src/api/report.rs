//! What a response says about its routing: the `x-outpost-route` header and the `outpost`
//! object in the body (route, reasons, complexity, confidence, cascaded, and the signals the
//! decision saw).

use axum::http::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::cloud::Connectivity;
use crate::policy::{Decision, Route};
use crate::power::PowerMode;
use crate::router::Score;

/// Tells the caller which route answered.
pub const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-outpost-route");

/// The `outpost` object.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The route that answered: `local`, `cloud` or `cache`.
    pub route: Route,
    /// Why, in order.
    pub reasons: Vec<String>,
    /// The router's complexity, if it scored the prompt.
    pub complexity: Option<f32>,
    /// The local answer's confidence, when a local answer was made.
    pub confidence: Option<f32>,
    /// Failed checks of the local answer (`empty`, `cut_off`, `refusal`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<&'static str>,
    /// A local answer was replaced by the cloud's for low confidence.
    pub cascaded: bool,
    /// The complexity threshold in force.
    pub threshold: f32,
    /// The power mode the decision saw.
    pub power_mode: PowerMode,
    /// The cloud's reachability the decision saw.
    pub connectivity: Connectivity,
    /// Cache hits: `exact` or `semantic`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_hit: Option<&'static str>,
    /// Cache hits: cosine similarity of the prompts (1 for exact hits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
    /// Cache hits: the entry's age in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_s: Option<u64>,
    /// Router time in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router_ms: Option<f64>,
}

impl Report {
    /// A report of a decision.
    pub fn new(decision: &Decision, score: Option<&Score>, connectivity: Connectivity) -> Self {
        Self {
            route: decision.route,
            reasons: decision.reasons.clone(),
            complexity: score.map(|s| s.complexity),
            confidence: None,
            checks: Vec::new(),
            cascaded: false,
            threshold: decision.threshold,
            power_mode: decision.power_mode,
            connectivity,
            cache_hit: None,
            similarity: None,
            age_s: None,
            router_ms: score.map(|s| s.elapsed.as_secs_f64() * 1000.0),
        }
    }

    /// Takes a later decision (the prompt turned out longer than the local context), keeping
    /// what is already known.
    pub fn redecide(&mut self, decision: &Decision) {
        self.route = decision.route;
        for reason in &decision.reasons {
            if !self.reasons.contains(reason) {
                self.reasons.push(reason.clone());
            }
        }
    }

    /// The header value for the route.
    pub fn header(&self) -> HeaderValue {
        HeaderValue::from_static(self.route.as_str())
    }

    /// The object as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}
