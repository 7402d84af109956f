//! The active probe: `GET {url}/models` on a schedule, so that connectivity is known before a
//! request needs the cloud, and an open breaker closes once the cloud is back.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::Endpoint;
use super::CloudError;

/// The first wait after a failed probe (or `probe_interval` if shorter); it doubles up to
/// `probe_max_interval` while the cloud stays unreachable.
const OFFLINE_FIRST_DELAY: Duration = Duration::from_secs(5);

impl Endpoint {
    /// One probe. Any HTTP answer below 500 (even 401 or 404) means the cloud is reachable.
    async fn probe_once(&self) -> Result<(), CloudError> {
        let mut request = self.http.get(self.models_url.clone());
        if let Some(header) = self.authorization() {
            request = request.header(AUTHORIZATION, header);
        }
        match tokio::time::timeout(self.probe_timeout(), request.send()).await {
            Err(_) => Err(CloudError::Timeout("probe")),
            Ok(Err(err)) => Err(self.reqwest_error(err)),
            Ok(Ok(response)) if response.status().is_server_error() => {
                Err(self.status_error(response.status(), b""))
            }
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// One probe, its outcome recorded in the health state.
    pub(super) async fn probe_and_record(&self) -> Result<(), CloudError> {
        let result = self.probe_once().await;
        match &result {
            Ok(()) => self.update(|h, _| h.reached(true)),
            Err(err) => {
                tracing::debug!(%err, "cloud probe failed");
                self.update(|h, _| h.probe_failed(err.to_string()));
            }
        }
        result
    }

    /// A probe only waits for a response head: twice the connect timeout, at most `timeout`.
    fn probe_timeout(&self) -> Duration {
        self.config.timeout.min(self.config.connect_timeout.saturating_mul(2))
    }
}

/// Probes until `shutdown`: every `probe_interval` while the cloud is reachable, with
/// exponential backoff while it is not. When the breaker opens, the next probe comes after the
/// first offline delay rather than a full `probe_interval`.
pub(super) async fn run(endpoint: Arc<Endpoint>, shutdown: CancellationToken) {
    let config = &endpoint.config;
    let first_offline = OFFLINE_FIRST_DELAY.min(config.probe_interval);
    let mut offline_delay = first_offline;
    'probing: loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => break,
            result = endpoint.probe_and_record() => result,
        };
        let delay = match result {
            Ok(()) => {
                offline_delay = first_offline;
                config.probe_interval
            }
            Err(_) => {
                let delay = offline_delay;
                offline_delay = offline_delay.saturating_mul(2).min(config.probe_max_interval);
                delay
            }
        };
        let mut deadline = Instant::now() + delay;
        loop {
            endpoint.update(|h, _| h.next_probe = Some(deadline.into_std()));
            tokio::select! {
                () = shutdown.cancelled() => break 'probing,
                () = tokio::time::sleep_until(deadline) => break,
                // The breaker opened: look again soon, not after a full interval.
                () = endpoint.wake.notified() => deadline = deadline.min(Instant::now() + first_offline),
            }
        }
    }
    endpoint.update(|h, _| h.next_probe = None);
}
