//! The cloud endpoint: the connection pool, the health state it shares with the probe, one
//! attempt at a chat request, and the retry loop around it that feeds the breaker.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use rand::Rng;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use tokio::sync::Notify;

use super::breaker::{Admission, BreakerState, Health};
use super::credentials::{read_ca, read_key, ApiKey};
use super::sse::CloudStream;
use super::wire::{
    error_chain, join, parse_base_url, parse_completion, prepare, read_body, retry_after, status_message,
    BodyError, MAX_BODY, MAX_ERROR_BODY,
};
use super::{CloudConfig, CloudError, CloudStatus};
use crate::cloud::Connectivity;
use crate::metrics::Metrics;

/// The longest wait between retries (unless `backoff` itself is longer), and the longest
/// `Retry-After` honoured.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One attempt's failure, with what the retry loop needs to know.
struct Failure {
    error: CloudError,
    /// The cloud's `Retry-After`, in seconds form.
    retry_after: Option<Duration>,
}

impl From<CloudError> for Failure {
    fn from(error: CloudError) -> Self {
        Self { error, retry_after: None }
    }
}

/// What a successful attempt got.
enum Got {
    /// The whole answer of a non-streamed call.
    Json(Value),
    /// The response head of a streamed call; the body is still to come.
    Head(reqwest::Response),
}

/// A configured cloud endpoint: everything calls and the probe share.
pub(super) struct Endpoint {
    /// Timings, retries, the model.
    pub(super) config: CloudConfig,
    /// Counts calls and shows connectivity.
    metrics: Arc<Metrics>,
    /// The connection pool (TLS roots, connect timeout, no redirects).
    pub(super) http: reqwest::Client,
    /// `{url}/chat/completions`.
    chat_url: Url,
    /// `{url}/models`, for the probe.
    pub(super) models_url: Url,
    /// The base URL without credentials, query or fragment, for logs and status.
    display_url: String,
    /// The bearer key; replaced when a 401 makes us read the file again.
    pub(super) key: Mutex<Option<ApiKey>>,
    /// The breaker and the probe's verdict.
    health: Mutex<Health>,
    /// Wakes the probe when the breaker opens.
    pub(super) wake: Notify,
}

impl Endpoint {
    pub(super) fn new(config: &CloudConfig, metrics: Arc<Metrics>) -> Result<Self, CloudError> {
        let url = config.url.as_deref().ok_or(CloudError::NotConfigured)?;
        let base = parse_base_url(url).map_err(|reason| CloudError::Client(format!("cloud.url {reason}")))?;
        let key = match &config.api_key_file {
            Some(path) => Some(read_key(path)?),
            None => None,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            for cert in read_ca(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        // The certificates are parsed only here; a CA file that is PEM but not a certificate
        // fails now.
        let http = builder.build().map_err(|e| match &config.ca_file {
            Some(path) => CloudError::CaFile { path: path.clone(), reason: error_chain(&e) },
            None => CloudError::Client(error_chain(&e)),
        })?;
        let mut display = base.clone();
        // Both only fail for URLs that cannot have credentials, which need no clearing.
        let _ = display.set_username("");
        let _ = display.set_password(None);
        display.set_query(None);
        display.set_fragment(None);
        Ok(Self {
            chat_url: join(&base, &["chat", "completions"])?,
            models_url: join(&base, &["models"])?,
            display_url: display.to_string(),
            config: config.clone(),
            metrics,
            http,
            key: Mutex::new(key),
            health: Mutex::new(Health::new(config.breaker_failures, config.breaker_cooldown)),
            wake: Notify::new(),
        })
    }

    pub(super) fn display_url(&self) -> &str {
        &self.display_url
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the health state; logs and exports connectivity changes, wakes the probe when
    /// the breaker opens.
    pub(super) fn update<R>(&self, f: impl FnOnce(&mut Health, Instant) -> R) -> R {
        let (result, before, after, last_error) = {
            let mut health = self.health();
            let before = (health.connectivity(), health.breaker());
            let result = f(&mut health, Instant::now());
            let after = (health.connectivity(), health.breaker());
            (result, before, after, health.last_error.clone())
        };
        if before.0 != after.0 {
            match after.0 {
                Connectivity::Online => tracing::info!(url = %self.display_url, "the cloud is reachable"),
                state => tracing::warn!(
                    url = %self.display_url,
                    ?state,
                    last_error = last_error.as_deref().unwrap_or(""),
                    "the cloud is not reachable"
                ),
            }
            self.metrics.set_connectivity(after.0);
        }
        if before.1 != BreakerState::Open && after.1 == BreakerState::Open {
            let cooldown = self.config.breaker_cooldown;
            tracing::warn!(url = %self.display_url, ?cooldown, "cloud circuit breaker opened");
            self.wake.notify_one();
        }
        result
    }

    pub(super) fn connectivity(&self) -> Connectivity {
        self.health().connectivity()
    }

    pub(super) fn status(&self) -> CloudStatus {
        let health = self.health();
        let now = Instant::now();
        CloudStatus {
            url: Some(self.display_url.clone()),
            model: self.config.model.clone(),
            connectivity: health.connectivity(),
            breaker: health.breaker(),
            consecutive_failures: health.failures(),
            last_success_unix: health
                .last_success
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            last_error: health.last_error.clone(),
            next_probe_in_ms: health
                .next_probe
                .map(|t| u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Feeds a finished call's outcome to the breaker.
    pub(super) fn record(&self, outcome: Result<(), &CloudError>) {
        match outcome {
            Ok(()) => self.update(|h, _| h.reached(true)),
            Err(e) if e.is_cloud_failure() => {
                self.update(|h, now| h.call_failed(now, e.to_string()));
            }
            // The cloud answered, though not well: it is reachable.
            Err(e @ (CloudError::Status { .. } | CloudError::InvalidResponse(_))) => self.update(|h, _| {
                h.reached(false);
                h.note_error(e.to_string());
            }),
            Err(e) => self.update(|h, _| h.note_error(e.to_string())),
        }
    }

    /// A stream ended: counts its outcome (`None`: its reader dropped it early).
    pub(super) fn stream_ended(&self, outcome: Option<Result<(), &CloudError>>) {
        match outcome {
            None => self.metrics.cloud_call("cancelled"),
            Some(outcome) => {
                self.metrics.cloud_call(outcome.map_or_else(CloudError::kind, |()| "ok"));
                self.record(outcome);
            }
        }
    }

    pub(super) async fn complete(&self, request: Value) -> Result<Value, CloudError> {
        let body = prepare(request, &self.config.model, false)?;
        match self.call(&body, false).await? {
            Got::Json(answer) => Ok(answer),
            Got::Head(_) => Err(CloudError::Client("internal: a head without a body".to_owned())),
        }
    }

    pub(super) async fn stream(self: &Arc<Self>, request: Value) -> Result<CloudStream, CloudError> {
        let body = prepare(request, &self.config.model, true)?;
        match self.call(&body, true).await? {
            Got::Head(response) => Ok(CloudStream::new(self.clone(), response)),
            Got::Json(_) => Err(CloudError::Client("internal: a body without a stream".to_owned())),
        }
    }

    /// Attempts a call until it succeeds, fails for good, or runs out of retries.
    async fn call(&self, body: &Value, stream: bool) -> Result<Got, CloudError> {
        let permit = self.admit()?;
        let mut key = self.key();
        let mut key_reread = false;
        let mut retry = 0;
        let result = loop {
            let failure = match self.attempt(body, stream, key.as_ref()).await {
                Ok(got) => break Ok(got),
                Err(failure) => failure,
            };
            if matches!(failure.error, CloudError::Status { status: 401, .. }) && !key_reread {
                key_reread = true;
                if let Some(new) = self.reread_key(key.as_ref()).await {
                    key = Some(new);
                    continue;
                }
            }
            if !failure.error.is_cloud_failure() || retry >= self.config.retries {
                break Err(failure.error);
            }
            let delay = match failure.retry_after {
                Some(wait) if wait > self.backoff_cap() => break Err(failure.error),
                Some(wait) => wait,
                None => self.backoff(retry),
            };
            retry += 1;
            tracing::debug!(error = %failure.error, retry, ?delay, "cloud call failed; retrying");
            tokio::time::sleep(delay).await;
        };
        permit.finish(result.as_ref().map(|_| ()));
        result
    }

    /// One request: the whole answer (non-streamed) or the head (streamed), within `timeout`.
    async fn attempt(&self, body: &Value, stream: bool, key: Option<&ApiKey>) -> Result<Got, Failure> {
        let mut request = self.http.post(self.chat_url.clone()).json(body);
        if stream {
            request = request.header(ACCEPT, "text/event-stream");
        }
        if let Some(key) = key {
            request = request.header(AUTHORIZATION, key.header.clone());
        }
        let work = async {
            let response = request.send().await.map_err(|e| self.reqwest_error(e))?;
            let status = response.status();
            if !status.is_success() {
                let retry_after = retry_after(response.headers());
                let bytes = read_body(response, MAX_ERROR_BODY).await.unwrap_or_default();
                return Err(Failure { error: self.status_error(status, &bytes), retry_after });
            }
            if stream {
                return Ok(Got::Head(response));
            }
            let bytes = read_body(response, MAX_BODY).await.map_err(|e| match e {
                BodyError::TooLarge => CloudError::InvalidResponse("the answer is larger than 8 MiB".into()),
                BodyError::Read(e) => self.reqwest_error(e),
            })?;
            Ok(Got::Json(parse_completion(&bytes).map_err(|e| CloudError::InvalidResponse(self.redact(e)))?))
        };
        match tokio::time::timeout(self.config.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(CloudError::Timeout("response").into()),
        }
    }

    fn admit(&self) -> Result<Permit<'_>, CloudError> {
        match self.update(|h, now| h.admit(now)) {
            Some(admission) => {
                Ok(Permit { endpoint: self, trial: admission == Admission::Trial, open: true })
            }
            None => Err(CloudError::BreakerOpen),
        }
    }

    fn backoff_cap(&self) -> Duration {
        MAX_BACKOFF.max(self.config.backoff)
    }

    /// The wait before retry number `retry + 1`: doubled each time, capped, jittered to 50–100 %.
    fn backoff(&self, retry: u32) -> Duration {
        let full = self.config.backoff.saturating_mul(1 << retry.min(20)).min(self.backoff_cap());
        full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// Maps a transport error; the message has no URL and no key.
    pub(super) fn reqwest_error(&self, err: reqwest::Error) -> CloudError {
        let err = err.without_url();
        if err.is_timeout() {
            return CloudError::Timeout(if err.is_connect() { "connect" } else { "response" });
        }
        let message = self.redact(error_chain(&err));
        if err.is_builder() {
            CloudError::Client(message)
        } else {
            CloudError::Connect(message)
        }
    }

    /// A non-2xx answer as an error, with the cloud's own message.
    pub(super) fn status_error(&self, status: StatusCode, body: &[u8]) -> CloudError {
        CloudError::Status { status: status.as_u16(), message: self.redact(status_message(status, body)) }
    }
}

/// A call the breaker let through; its outcome must be recorded. Dropped unrecorded (the caller
/// went away), a half-open trial hands the trial to the next call.
struct Permit<'a> {
    endpoint: &'a Endpoint,
    trial: bool,
    open: bool,
}

impl Permit<'_> {
    fn finish(mut self, outcome: Result<(), &CloudError>) {
        self.open = false;
        self.endpoint.record(outcome);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.open && self.trial {
            self.endpoint.update(|h, now| h.trial_abandoned(now));
        }
    }
}
