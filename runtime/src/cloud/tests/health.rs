//! The circuit breaker, the probe, and what `connectivity` and `status` report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::fake::{completion, FakeCloud, Reply};
use super::{calls, cloud, config, sample, wait_for};
use crate::cloud::Connectivity;
use crate::cloud::{BreakerState, Cloud, CloudConfig, CloudError};
use crate::metrics::Metrics;

const CHAT: &str = "/v1/chat/completions";

fn gauge(metrics: &Metrics, state: &str) -> Option<f64> {
    sample(metrics, &format!("outpost_connectivity{{state=\"{state}\"}}"))
}

#[tokio::test]
async fn the_breaker_opens_after_failures_in_a_row_and_a_probe_closes_it() {
    let healthy = Arc::new(AtomicBool::new(false));
    let fake = FakeCloud::start({
        let healthy = healthy.clone();
        move |_, r| match (healthy.load(Ordering::SeqCst), r.path.as_str()) {
            (true, "/v1/models") => Reply::json(200, json!({"object": "list", "data": []})),
            (true, _) => Reply::json(200, completion("m", "back")),
            (false, _) => Reply::json(500, json!({"error": {"message": "down for maintenance"}})),
        }
    })
    .await;
    let mut config = config(&fake.url());
    config.retries = 0;
    config.breaker_failures = 2;
    let (cloud, metrics) = cloud(&config);

    for _ in 0..2 {
        let err = cloud.complete(json!({"messages": []})).await.expect_err("500");
        assert!(matches!(err, CloudError::Status { status: 500, .. }), "{err:?}");
    }
    let status = cloud.status();
    assert_eq!((status.breaker, status.consecutive_failures), (BreakerState::Open, 2));
    assert_eq!(status.last_error.as_deref(), Some("the cloud answered 500: down for maintenance"));
    assert_eq!(cloud.connectivity(), Connectivity::Offline);
    assert_eq!(gauge(&metrics, "offline"), Some(1.0));

    let err = cloud.complete(json!({"messages": []})).await.expect_err("breaker open");
    assert!(matches!(err, CloudError::BreakerOpen), "{err:?}");
    assert!(err.is_unreachable());
    assert!(cloud.stream(json!({"messages": []})).await.is_err_and(|e| matches!(e, CloudError::BreakerOpen)));
    assert_eq!(fake.hits(CHAT), 2, "an open breaker fails fast, without a request");
    assert_eq!(calls(&metrics, "breaker_open"), 2.0);

    healthy.store(true, Ordering::SeqCst);
    let shutdown = CancellationToken::new();
    let probe = cloud.spawn_probe(shutdown.clone());
    wait_for("the probe to close the breaker", || cloud.connectivity() == Connectivity::Online).await;
    assert_eq!(cloud.status().breaker, BreakerState::Closed);
    assert_eq!(gauge(&metrics, "online"), Some(1.0));
    let answer = cloud.complete(json!({"messages": []})).await.expect("calls go through again");
    assert_eq!(answer["choices"][0]["message"]["content"], "back");
    assert_eq!(fake.hits(CHAT), 3);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), probe).await.expect("the probe stops").expect("no panic");
}

#[tokio::test]
async fn after_the_cooldown_one_trial_call_decides() {
    let fake = FakeCloud::start(|n, _| match n {
        0 => Reply::json(503, json!({"error": {"message": "busy"}})),
        _ => Reply::json(200, completion("m", "trial")),
    })
    .await;
    let mut config = config(&fake.url());
    config.retries = 0;
    config.breaker_failures = 1;
    config.breaker_cooldown = Duration::from_millis(100);
    let (cloud, _) = cloud(&config);

    assert!(cloud.complete(json!({"messages": []})).await.is_err());
    assert!(matches!(cloud.complete(json!({"messages": []})).await, Err(CloudError::BreakerOpen)));
    tokio::time::sleep(Duration::from_millis(120)).await;

    let answer = cloud.complete(json!({"messages": []})).await.expect("the trial goes through");
    assert_eq!(answer["choices"][0]["message"]["content"], "trial");
    assert_eq!(cloud.status().breaker, BreakerState::Closed);
    assert_eq!(cloud.connectivity(), Connectivity::Online);
}

#[tokio::test]
async fn the_probe_follows_the_cloud_going_down_and_coming_back() {
    // The probe sends no key here: any answer below 500, even 401, means reachable.
    let mut fake = FakeCloud::start(|_, _| Reply::json(401, json!({"error": {"message": "no key"}}))).await;
    fake.stop();
    let (cloud, metrics) = cloud(&config(&fake.url()));
    let shutdown = CancellationToken::new();
    let probe = cloud.spawn_probe(shutdown.clone());

    wait_for("offline while the cloud is down", || cloud.connectivity() == Connectivity::Offline).await;
    let status = cloud.status();
    assert!(status.last_error.is_some_and(|e| e.contains("cannot reach the cloud")));
    assert!(status.next_probe_in_ms.is_some_and(|ms| ms <= 150));
    assert_eq!(status.breaker, BreakerState::Closed, "probes alone do not open the breaker");
    assert_eq!(gauge(&metrics, "offline"), Some(1.0));

    fake.restart().await;
    wait_for("online once it is back", || cloud.connectivity() == Connectivity::Online).await;
    assert!(fake.hits("/v1/models") >= 1);
    assert_eq!(gauge(&metrics, "online"), Some(1.0));
    assert_eq!(gauge(&metrics, "offline"), Some(0.0));

    fake.stop();
    wait_for("offline again", || cloud.connectivity() == Connectivity::Offline).await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), probe).await.expect("the probe stops").expect("no panic");
    assert_eq!(cloud.status().next_probe_in_ms, None);
}

#[tokio::test]
async fn without_a_url_there_is_no_cloud() {
    let metrics = Arc::new(Metrics::new());
    let cloud = Cloud::new(&CloudConfig::default(), metrics.clone()).expect("no cloud is fine");

    assert!(!cloud.is_configured());
    assert_eq!(cloud.connectivity(), Connectivity::NotConfigured);
    assert_eq!(gauge(&metrics, "not_configured"), Some(1.0));
    let err = cloud.complete(json!({"messages": []})).await.expect_err("no cloud");
    assert!(matches!(err, CloudError::NotConfigured) && err.is_unreachable(), "{err:?}");
    assert!(matches!(cloud.stream(json!({})).await, Err(CloudError::NotConfigured)));
    let status = cloud.status();
    assert_eq!((status.url, status.connectivity), (None, Connectivity::NotConfigured));

    let shutdown = CancellationToken::new();
    let probe = cloud.spawn_probe(shutdown.clone());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!probe.is_finished(), "the probe task lives until shutdown, like the others");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), probe).await.expect("it stops").expect("no panic");
}

#[tokio::test]
async fn the_status_shows_the_url_without_credentials() {
    let mut config = config("http://user:hunter2@127.0.0.1:9/v1?api-key=abc");
    config.price_per_1k_tokens = 0.002;
    let (cloud, _) = cloud(&config);

    let status = serde_json::to_value(cloud.status()).expect("serializes");

    assert_eq!(
        status,
        json!({
            "url": "http://127.0.0.1:9/v1",
            "model": "cloud-model",
            "connectivity": "unknown",
            "breaker": "closed",
            "consecutive_failures": 0,
            "last_success_unix": null,
            "last_error": null,
            "next_probe_in_ms": null
        })
    );
    assert!(!format!("{cloud:?}").contains("hunter2"));
    assert_eq!(cloud.price_per_1k_tokens(), 0.002);
}

#[test]
fn a_missing_or_empty_key_file_names_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config("https://127.0.0.1:9/v1");
    for path in [dir.path().join("missing"), super::write(dir.path(), "empty", " \n")] {
        config.api_key_file = Some(path.clone());
        match Cloud::new(&config, Arc::new(Metrics::new())) {
            Err(err @ CloudError::KeyFile { .. }) => {
                assert!(err.to_string().contains(&path.display().to_string()), "{err}");
            }
            other => panic!("expected a KeyFile error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn probe_now_answers_with_the_connectivity_it_found() {
    let mut fake =
        FakeCloud::start(|_, _| Reply::json(404, json!({"error": {"message": "no /models here"}}))).await;
    let (cloud, _) = cloud(&config(&fake.url()));

    assert_eq!(cloud.probe_now().await, Connectivity::Online, "a 404 still means reachable");
    fake.stop();
    assert_eq!(cloud.probe_now().await, Connectivity::Offline);
    assert_eq!(fake.hits("/v1/models"), 1);

    let (unconfigured, _) = super::cloud(&CloudConfig::default());
    assert_eq!(unconfigured.probe_now().await, Connectivity::NotConfigured);
}
