//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! Every metric is an atomic, so the engine thread and the HTTP tasks update them without locks.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of a finished HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The HTTP status code.
    pub status: u16,
}

/// Labels of an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's `code`, as sent to the client (e.g. `queue_full`, `context_length_exceeded`).
    pub kind: String,
}

/// Labels of an engine slot.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    /// The slot (llama.cpp sequence id).
    pub slot: i32,
}

/// Labels of a model (re)load.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    /// `ok` or `failed`.
    pub result: String,
}

/// Labels naming one value of a state or outcome (`route`, `result`, `state`, `mode`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `local`, `cloud`, `cache` or `refuse`.
    pub route: String,
}

/// Labels of a cloud call's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, or the error kind (`timeout`, `connect`, `status`, `breaker_open`, ...).
    pub result: String,
}

/// Labels of a state gauge set one-hot (1 for the current state, 0 for the others).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state's name.
    pub state: String,
}

/// All metrics of the runtime.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by endpoint and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Errors by kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Prompt tokens evaluated (including those reused from the KV cache).
    pub prompt_tokens: Counter,
    /// Tokens generated.
    pub completion_tokens: Counter,
    /// Seconds spent evaluating prompts.
    pub prompt_seconds: Counter<f64, AtomicU64>,
    /// Seconds spent generating tokens.
    pub decode_seconds: Counter<f64, AtomicU64>,
    /// Prompt tokens per second of the last request.
    pub prompt_tokens_per_second: Gauge<f64, AtomicU64>,
    /// Generated tokens per second of the last request.
    pub decode_tokens_per_second: Gauge<f64, AtomicU64>,
    /// Decode speed of each request (tokens/s).
    pub decode_rate: Histogram,
    /// Requests waiting for the engine.
    pub queue_depth: Gauge,
    /// Generations running now (0 or 1 while requests are served one at a time).
    pub active: Gauge,
    /// KV cache cells (tokens) in use, by slot.
    pub kv_cells_used: Family<SlotLabels, Gauge>,
    /// KV cache cells (tokens) per slot (`model.context`).
    pub kv_cells_per_slot: Gauge,
    /// Slots (`api.parallel`).
    pub slots: Gauge,
    /// 1 while a model is loaded.
    pub model_loaded: Gauge,
    /// Model loads by result.
    pub model_loads: Family<LoadLabels, Counter>,
    /// Chat requests by the route that answered.
    pub routes: Family<RouteLabels, Counter>,
    /// Router scoring time per prompt (seconds).
    pub router_seconds: Histogram,
    /// Local answers checked for confidence (the cascade's denominator).
    pub cascade_checked: Counter,
    /// Local answers replaced by the cloud's for low confidence.
    pub cascaded: Counter,
    /// Estimated cloud cost avoided by answering locally (price per 1k tokens from config).
    pub cloud_cost_avoided: Counter<f64, AtomicU64>,
    /// Cloud calls by outcome.
    pub cloud_calls: Family<ResultLabels, Counter>,
    /// Cloud reachability, one-hot over `online`, `offline`, `unknown`, `not_configured`.
    pub connectivity: Family<StateLabels, Gauge>,
    /// Battery level in percent (-1: no battery).
    pub battery_level: Gauge,
    /// 1 while on battery.
    pub on_battery: Gauge,
    /// Power mode, one-hot over `high`, `balanced`, `low`.
    pub power_mode: Family<StateLabels, Gauge>,
    /// Cache lookups by result (`exact`, `semantic`, `miss`, `error`).
    pub cache_lookups: Family<ResultLabels, Counter>,
    /// Cache lookup time (seconds).
    pub cache_lookup_seconds: Histogram,
    /// Cache stores by outcome (`stored`, `below_confidence`, `private`, `empty`, `too_large`,
    /// `error`).
    pub cache_stores: Family<ResultLabels, Counter>,
    /// Chat completion latencies (to the response head) since telemetry last took them.
    latencies: std::sync::Mutex<Vec<f64>>,
}

impl Metrics {
    /// Records how many KV cells slot `slot` holds.
    pub fn set_kv_used(&self, slot: i32, cells: usize) {
        self.kv_cells_used.get_or_create(&SlotLabels { slot }).set(i64::try_from(cells).unwrap_or(i64::MAX));
    }

    /// Records a chat completion's latency (kept for telemetry; the newest 10,000 at most).
    pub fn record_latency(&self, seconds: f64) {
        let mut v = self.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if v.len() >= 10_000 {
            v.remove(0);
        }
        v.push(seconds * 1000.0);
    }

    /// The latencies (milliseconds) recorded since the last call.
    pub fn take_latencies(&self) -> Vec<f64> {
        std::mem::take(&mut *self.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("outpost");
        let m = Self {
            latencies: std::sync::Mutex::new(Vec::new()),
            requests: Family::default(),
            errors: Family::default(),
            prompt_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            prompt_seconds: Counter::default(),
            decode_seconds: Counter::default(),
            prompt_tokens_per_second: Gauge::default(),
            decode_tokens_per_second: Gauge::default(),
            decode_rate: Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]),
            queue_depth: Gauge::default(),
            active: Gauge::default(),
            kv_cells_used: Family::default(),
            kv_cells_per_slot: Gauge::default(),
            slots: Gauge::default(),
            model_loaded: Gauge::default(),
            model_loads: Family::default(),
            routes: Family::default(),
            router_seconds: Histogram::new([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
            cascade_checked: Counter::default(),
            cascaded: Counter::default(),
            cloud_cost_avoided: Counter::default(),
            cloud_calls: Family::default(),
            connectivity: Family::default(),
            battery_level: Gauge::default(),
            on_battery: Gauge::default(),
            power_mode: Family::default(),
            cache_lookups: Family::default(),
            cache_lookup_seconds: Histogram::new([0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05]),
            cache_stores: Family::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "HTTP requests by endpoint and status", m.requests.clone());
        registry.register("errors", "Errors returned to clients, by kind", m.errors.clone());
        registry.register("prompt_tokens", "Prompt tokens processed", m.prompt_tokens.clone());
        registry.register("completion_tokens", "Tokens generated", m.completion_tokens.clone());
        registry.register("prompt_seconds", "Seconds spent on prompt evaluation", m.prompt_seconds.clone());
        registry.register("decode_seconds", "Seconds spent generating tokens", m.decode_seconds.clone());
        registry.register(
            "prompt_tokens_per_second",
            "Prompt evaluation speed of the last request",
            m.prompt_tokens_per_second.clone(),
        );
        registry.register(
            "decode_tokens_per_second",
            "Generation speed of the last request",
            m.decode_tokens_per_second.clone(),
        );
        registry.register(
            "decode_rate_tokens_per_second",
            "Generation speed per request",
            m.decode_rate.clone(),
        );
        registry.register("queue_depth", "Requests waiting for the engine", m.queue_depth.clone());
        registry.register("active_generations", "Generations running now", m.active.clone());
        registry.register(
            "kv_cells_used",
            "KV cache cells (tokens) in use, by slot",
            m.kv_cells_used.clone(),
        );
        registry.register(
            "kv_cells_per_slot",
            "KV cache cells (tokens) each slot has",
            m.kv_cells_per_slot.clone(),
        );
        registry.register("slots", "Generations the engine runs at once (api.parallel)", m.slots.clone());
        registry.register("model_loaded", "1 while a model is loaded", m.model_loaded.clone());
        registry.register("model_loads", "Model loads by result", m.model_loads.clone());
        registry.register("routes", "Chat requests by the route that answered", m.routes.clone());
        registry.register("router_seconds", "Router scoring time per prompt", m.router_seconds.clone());
        registry.register(
            "cascade_checked",
            "Local answers checked for confidence",
            m.cascade_checked.clone(),
        );
        registry.register(
            "cascaded",
            "Local answers replaced by the cloud for low confidence",
            m.cascaded.clone(),
        );
        registry.register(
            "cloud_cost_avoided_dollars",
            "Estimated cloud cost avoided by local answers",
            m.cloud_cost_avoided.clone(),
        );
        registry.register("cloud_calls", "Cloud calls by outcome", m.cloud_calls.clone());
        registry.register("connectivity", "Cloud reachability (one-hot by state)", m.connectivity.clone());
        registry.register("battery_level_percent", "Battery level (-1: no battery)", m.battery_level.clone());
        registry.register("on_battery", "1 while running on battery", m.on_battery.clone());
        registry.register("power_mode", "Power mode (one-hot by mode)", m.power_mode.clone());
        registry.register("cache_lookups", "Cache lookups by result", m.cache_lookups.clone());
        registry.register("cache_lookup_seconds", "Cache lookup time", m.cache_lookup_seconds.clone());
        registry.register("cache_stores", "Cache stores by outcome", m.cache_stores.clone());
        m.battery_level.set(-1);
        Self { registry, ..m }
    }

    /// Counts an error returned to a client.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&ErrorLabels { kind: kind.to_owned() }).inc();
    }

    /// Counts a cloud call's outcome (`ok` or an error kind).
    pub fn cloud_call(&self, result: &str) {
        self.cloud_calls.get_or_create(&ResultLabels { result: result.to_owned() }).inc();
    }

    /// Sets the connectivity gauges.
    pub fn set_connectivity(&self, state: crate::cloud::Connectivity) {
        use crate::cloud::Connectivity as C;
        for (c, name) in [
            (C::Online, "online"),
            (C::Offline, "offline"),
            (C::Unknown, "unknown"),
            (C::NotConfigured, "not_configured"),
        ] {
            self.connectivity.get_or_create(&StateLabels { state: name.into() }).set(i64::from(c == state));
        }
    }

    /// Sets the power gauges.
    pub fn set_power(&self, state: &crate::power::PowerState, mode: crate::power::PowerMode) {
        use crate::power::PowerMode as M;
        self.battery_level.set(state.level.map_or(-1, i64::from));
        self.on_battery.set(i64::from(state.source == crate::power::PowerSource::Battery));
        for (m, name) in [(M::High, "high"), (M::Balanced, "balanced"), (M::Low, "low")] {
            self.power_mode.get_or_create(&StateLabels { state: name.into() }).set(i64::from(m == mode));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
