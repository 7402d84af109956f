//! The cloud LLM: an OpenAI-compatible HTTPS client with timeouts, retries, a circuit breaker,
//! and an active probe; together they say whether the cloud is reachable.
//!
//! - [`CloudConfig`] is `[cloud]`; no `url`, no cloud.
//! - [`Cloud::complete`] and [`Cloud::stream`] forward a chat request. Connect errors, timeouts,
//!   429 and 5xx are retried with backoff (a stream only until its response head arrives), and
//!   feed a circuit breaker: after `breaker_failures` of them in a row it fails calls fast for
//!   `breaker_cooldown`, then lets one trial call through (half-open).
//! - [`Cloud::spawn_probe`] runs the active probe (`GET {url}/models`): any HTTP answer below 500
//!   means reachable and closes the breaker.
//! - [`Cloud::connectivity`] is what routing reads: `Unknown` until the first probe or call
//!   result, `Offline` while the breaker is not closed or the last probe failed, `Online` after a
//!   success.
//!
//! The API key is read from a file, sent only in the `Authorization` header, never logged, and
//! blanked out of every error message.

mod breaker;
mod client;
mod connectivity;
mod credentials;
mod probe;
mod sse;
mod wire;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub use breaker::BreakerState;
pub use connectivity::Connectivity;
pub use sse::CloudStream;

use client::Endpoint;

/// `[cloud]`: the cloud endpoint. No `url`: no cloud.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Base URL of an OpenAI-compatible API, e.g. `https://api.openai.com/v1`; chat requests go
    /// to `{url}/chat/completions`, probes to `{url}/models`.
    pub url: Option<String>,
    /// The model to ask for: it replaces the `model` of every forwarded request.
    pub model: String,
    /// A file holding the API key, sent as a bearer token. Read at start, and read again once
    /// when the cloud answers 401 (the key was rotated). Unset: the systemd credential
    /// `$CREDENTIALS_DIRECTORY/cloud-api-key` if it exists (`LoadCredential=cloud-api-key:...`),
    /// else no `Authorization` header.
    pub api_key_file: Option<PathBuf>,
    /// Extra PEM root certificate(s) to trust besides the system's (a private cloud, tests).
    pub ca_file: Option<PathBuf>,
    /// How long a TCP and TLS connection may take to set up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one attempt may take: the whole call when not streamed, until the response head
    /// when streamed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest silence allowed between two chunks of a streamed answer.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Retries after a connect error, timeout, 429 or 5xx (never after another 4xx, nor once a
    /// stream has started).
    pub retries: u32,
    /// The delay before the first retry; doubled for each further one, with jitter, up to 5 s
    /// (or this value, if larger). A `Retry-After` up to that cap is honoured; a longer one ends
    /// the call at once.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// How often the probe runs while the cloud is reachable.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// The ceiling of the probe's backoff while the cloud is unreachable (it starts at 5 s, or
    /// `probe_interval` if shorter, and doubles).
    #[serde(with = "humantime_serde")]
    pub probe_max_interval: Duration,
    /// Failures in a row (connect errors, timeouts, 429, 5xx) that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails calls fast before it lets one trial call through.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// The cloud's price in dollars per 1000 tokens, to estimate the cost local answers avoid.
    pub price_per_1k_tokens: f64,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            url: None,
            model: "gpt-4o-mini".to_owned(),
            api_key_file: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            retries: 2,
            backoff: Duration::from_millis(250),
            probe_interval: Duration::from_secs(30),
            probe_max_interval: Duration::from_secs(300),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(30),
            price_per_1k_tokens: 0.0006,
        }
    }
}

impl CloudConfig {
    /// Checks ranges and consistency; errors name the key inside the section.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(url) = &self.url {
            wire::parse_base_url(url).map_err(|reason| ("url", reason))?;
            if self.model.trim().is_empty() {
                return Err(("model", "must not be empty when `url` is set".to_owned()));
            }
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("timeout", self.timeout),
            ("idle_timeout", self.idle_timeout),
            ("backoff", self.backoff),
            ("probe_interval", self.probe_interval),
            ("probe_max_interval", self.probe_max_interval),
            ("breaker_cooldown", self.breaker_cooldown),
        ] {
            if value.is_zero() {
                return Err((key, "must be longer than 0".to_owned()));
            }
        }
        if self.probe_max_interval < self.probe_interval {
            return Err(("probe_max_interval", "must not be shorter than `probe_interval`".to_owned()));
        }
        if self.retries > 10 {
            return Err(("retries", format!("must be at most 10 (got {})", self.retries)));
        }
        if self.breaker_failures == 0 {
            return Err(("breaker_failures", "must be at least 1".to_owned()));
        }
        if !(self.price_per_1k_tokens.is_finite() && self.price_per_1k_tokens >= 0.0) {
            return Err(("price_per_1k_tokens", "must be a number of at least 0".to_owned()));
        }
        Ok(())
    }
}

/// A cloud call, or the cloud client's setup, failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// No `[cloud] url` is configured.
    #[error("no cloud is configured")]
    NotConfigured,
    /// The circuit breaker is open: the cloud failed repeatedly, so no call was made.
    #[error("the cloud failed repeatedly; calls are paused (circuit breaker open)")]
    BreakerOpen,
    /// The API key file could not be read, or holds no usable key.
    #[error("cannot read the cloud API key file {path}: {source}")]
    KeyFile {
        /// The file (`cloud.api_key_file`).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file could not be read or holds no PEM certificate.
    #[error("cannot use the cloud CA file {path}: {reason}")]
    CaFile {
        /// The file (`cloud.ca_file`).
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No connection could be made, or it broke before the answer was complete.
    #[error("cannot reach the cloud: {0}")]
    Connect(String),
    /// A phase (`connect`, `response`, `idle`, `probe`) took longer than its timeout.
    #[error("the cloud did not answer in time ({0} timeout)")]
    Timeout(&'static str),
    /// The cloud answered with an error status.
    #[error("the cloud answered {status}: {message}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The cloud's error message (`error.message` of its JSON body, or its text).
        message: String,
    },
    /// The cloud's answer is not what an OpenAI-compatible API sends.
    #[error("the cloud's answer is not valid: {0}")]
    InvalidResponse(String),
    /// The request could not be built or sent (not a JSON object, HTTP client setup).
    #[error("cloud client error: {0}")]
    Client(String),
}

impl CloudError {
    /// The label of this error in metrics (`outpost_cloud_calls{result}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotConfigured => "not_configured",
            Self::BreakerOpen => "breaker_open",
            Self::KeyFile { .. } => "key_file",
            Self::CaFile { .. } => "ca_file",
            Self::Connect(_) => "connect",
            Self::Timeout(_) => "timeout",
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status { status: 500.., .. } => "status_5xx",
            Self::Status { status: 400..=499, .. } => "status_4xx",
            Self::Status { .. } => "status_other",
            Self::InvalidResponse(_) => "invalid_response",
            Self::Client(_) => "client",
        }
    }

    /// The cloud is not usable now (not configured, breaker open, unreachable, too slow, 5xx or
    /// 429), so the caller may answer locally instead. Other errors concern the request itself.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::NotConfigured | Self::BreakerOpen | Self::Connect(_) | Self::Timeout(_) => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Counts against the circuit breaker: the cloud was tried and is not usable.
    fn is_cloud_failure(&self) -> bool {
        self.is_unreachable() && !matches!(self, Self::NotConfigured | Self::BreakerOpen)
    }
}

/// What `GET /status`-style reports show about the cloud.
#[derive(Clone, Debug, Serialize)]
pub struct CloudStatus {
    /// The base URL, without credentials; `None` when no cloud is configured.
    pub url: Option<String>,
    /// The model asked for.
    pub model: String,
    /// Whether the cloud can be reached.
    pub connectivity: Connectivity,
    /// The circuit breaker.
    pub breaker: BreakerState,
    /// Failures in a row (connect, timeout, 429, 5xx) since the last success.
    pub consecutive_failures: u32,
    /// When a call last succeeded or a probe last found the cloud reachable (seconds since the
    /// Unix epoch).
    pub last_success_unix: Option<u64>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Milliseconds until the next probe; `None` while no probe runs.
    pub next_probe_in_ms: Option<u64>,
}

/// The cloud LLM client. Cloning is cheap: every clone shares the connection pool, the breaker
/// and the probe's findings.
#[derive(Clone)]
pub struct Cloud {
    inner: Arc<Inner>,
}

struct Inner {
    /// Sent upstream as `model`; reported in the status even without a cloud.
    model: String,
    /// Dollars per 1000 tokens, for the cost-avoided estimate.
    price_per_1k_tokens: f64,
    /// Counts calls (`cloud_calls`) when there is no endpoint to do it.
    metrics: Arc<Metrics>,
    /// The configured endpoint; `None` when `url` is unset.
    endpoint: Option<Arc<Endpoint>>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("url", &self.inner.endpoint.as_ref().map(|e| e.display_url()))
            .field("model", &self.inner.model)
            .finish_non_exhaustive()
    }
}

impl Cloud {
    /// Sets up the client: reads the key and CA files and builds the connection pool. No `url`:
    /// a cloud that is `NotConfigured` and whose calls fail with [`CloudError::NotConfigured`].
    pub fn new(config: &CloudConfig, metrics: Arc<Metrics>) -> Result<Self, CloudError> {
        let endpoint = match &config.url {
            Some(_) => {
                let config = CloudConfig {
                    api_key_file: credentials::key_file(
                        config.api_key_file.as_deref(),
                        std::env::var_os("CREDENTIALS_DIRECTORY").as_deref(),
                    ),
                    ..config.clone()
                };
                Some(Arc::new(Endpoint::new(&config, metrics.clone())?))
            }
            None => None,
        };
        metrics.set_connectivity(if endpoint.is_some() {
            Connectivity::Unknown
        } else {
            Connectivity::NotConfigured
        });
        let inner = Inner {
            model: config.model.clone(),
            price_per_1k_tokens: config.price_per_1k_tokens,
            metrics,
            endpoint,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// A `[cloud] url` is configured.
    pub fn is_configured(&self) -> bool {
        self.inner.endpoint.is_some()
    }

    /// The cloud's price in dollars per 1000 tokens (`price_per_1k_tokens`).
    pub fn price_per_1k_tokens(&self) -> f64 {
        self.inner.price_per_1k_tokens
    }

    /// Whether the cloud can be reached, as far as probes and calls tell.
    pub fn connectivity(&self) -> Connectivity {
        self.inner.endpoint.as_ref().map_or(Connectivity::NotConfigured, |e| e.connectivity())
    }

    /// The client's state, for operators.
    pub fn status(&self) -> CloudStatus {
        match &self.inner.endpoint {
            Some(endpoint) => endpoint.status(),
            None => CloudStatus {
                url: None,
                model: self.inner.model.clone(),
                connectivity: Connectivity::NotConfigured,
                breaker: BreakerState::Closed,
                consecutive_failures: 0,
                last_success_unix: None,
                last_error: None,
                next_probe_in_ms: None,
            },
        }
    }

    /// Starts the active probe; it runs until `shutdown` is cancelled. Without a cloud the task
    /// only waits for `shutdown`, so a supervisor may treat it like any other task.
    pub fn spawn_probe(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        match &self.inner.endpoint {
            Some(endpoint) => tokio::spawn(probe::run(endpoint.clone(), shutdown)),
            None => tokio::spawn(async move { shutdown.cancelled().await }),
        }
    }

    /// Probes the cloud once now (as the probe task does) and returns the connectivity that
    /// results; for one-shot commands that run no probe task.
    pub async fn probe_now(&self) -> Connectivity {
        match &self.inner.endpoint {
            Some(endpoint) => {
                // The outcome is recorded; connectivity tells the caller what it was.
                let _ = endpoint.probe_and_record().await;
                endpoint.connectivity()
            }
            None => Connectivity::NotConfigured,
        }
    }

    /// A non-streamed chat completion. `request` is the client's OpenAI request body; its
    /// `outpost` and `stream_options` fields are removed, `model` and `stream: false` are set.
    /// The answer is the cloud's JSON body (an object with `choices`).
    pub async fn complete(&self, request: serde_json::Value) -> Result<serde_json::Value, CloudError> {
        let result = match &self.inner.endpoint {
            Some(endpoint) => endpoint.complete(request).await,
            None => Err(CloudError::NotConfigured),
        };
        self.inner.metrics.cloud_call(result.as_ref().map_or_else(CloudError::kind, |_| "ok"));
        result
    }

    /// A streamed chat completion: like [`Cloud::complete`] with `stream: true`. Retries end once
    /// the response head has arrived; the stream yields one JSON object per server-sent event
    /// and ends after `data: [DONE]`, or with an error if the answer is cut short.
    pub async fn stream(&self, request: serde_json::Value) -> Result<CloudStream, CloudError> {
        let result = match &self.inner.endpoint {
            Some(endpoint) => endpoint.stream(request).await,
            None => Err(CloudError::NotConfigured),
        };
        // A stream counts its outcome when it ends.
        if let Err(err) = &result {
            self.inner.metrics.cloud_call(err.kind());
        }
        result
    }
}
