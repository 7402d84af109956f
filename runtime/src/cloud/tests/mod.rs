//! The cloud client against a fake cloud on 127.0.0.1: what a caller of [`Cloud`] sees.

mod calls;
mod config;
mod fake;
mod health;
mod streaming;
mod tls;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Cloud, CloudConfig};
use crate::metrics::Metrics;

/// Short timeouts, fast retries, a breaker that stays open for the whole test.
fn config(url: &str) -> CloudConfig {
    CloudConfig {
        url: Some(url.to_owned()),
        model: "cloud-model".to_owned(),
        connect_timeout: Duration::from_millis(300),
        timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(300),
        retries: 2,
        backoff: Duration::from_millis(10),
        probe_interval: Duration::from_millis(50),
        probe_max_interval: Duration::from_millis(150),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_secs(60),
        ..CloudConfig::default()
    }
}

fn cloud(config: &CloudConfig) -> (Cloud, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let cloud = Cloud::new(config, metrics.clone()).expect("the cloud client starts");
    (cloud, metrics)
}

/// Writes a file in `dir` and returns its path.
fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write a test file");
    path
}

/// The value of one sample in the Prometheus text, e.g. `outpost_cloud_calls_total{result="ok"}`.
fn sample(metrics: &Metrics, name: &str) -> Option<f64> {
    metrics.render().lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn calls(metrics: &Metrics, result: &str) -> f64 {
    sample(metrics, &format!("outpost_cloud_calls_total{{result=\"{result}\"}}")).unwrap_or(0.0)
}

/// Waits up to 1.5 s for `condition`.
async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(1500);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The API handler spawns calls and hands streams to the HTTP body: they must be `Send`.
#[test]
fn calls_and_streams_can_move_between_threads() {
    fn send<T: Send + 'static>(_: T) {}
    fn stream<T: Send + Unpin + 'static>() {}
    fn send_sync<T: Send + Sync + 'static>() {}
    let (cloud, _) = cloud(&CloudConfig::default());
    let c = cloud.clone();
    send(async move { c.complete(serde_json::json!({})).await });
    send(async move { cloud.stream(serde_json::json!({})).await });
    stream::<super::CloudStream>();
    send_sync::<Cloud>();
}
