//! Non-streamed calls: the request sent upstream, retries, and which errors are final.

use std::time::{Duration, Instant};

use serde_json::json;

use super::fake::{completion, FakeCloud, Reply};
use super::{calls, cloud, config, write};
use crate::cloud::CloudError;
use crate::cloud::Connectivity;

const CHAT: &str = "/v1/chat/completions";

#[tokio::test]
async fn forwards_the_request_for_the_cloud_model_with_the_key_from_the_file() {
    let fake = FakeCloud::start(|_, r| {
        Reply::json(200, completion(r.json()["model"].as_str().unwrap_or("?"), "hi"))
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(&fake.url());
    config.api_key_file = Some(write(dir.path(), "key", "  sk-test-123\n"));
    let (cloud, metrics) = cloud(&config);
    assert_eq!(cloud.connectivity(), Connectivity::Unknown);

    let answer = cloud
        .complete(json!({
            "model": "local-model",
            "messages": [{"role": "user", "content": "hello"}],
            "temperature": 0.2,
            "stream": true,
            "stream_options": {"include_usage": true},
            "outpost": {"route": "cloud"}
        }))
        .await
        .expect("the cloud answers");

    assert_eq!(answer["choices"][0]["message"]["content"], "hi");
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", CHAT));
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(
        sent.json(),
        json!({
            "model": "cloud-model",
            "messages": [{"role": "user", "content": "hello"}],
            "temperature": 0.2,
            "stream": false
        })
    );
    assert_eq!(cloud.connectivity(), Connectivity::Online);
    assert!(cloud.status().last_success_unix.is_some());
    assert_eq!(calls(&metrics, "ok"), 1.0);
}

#[tokio::test]
async fn retries_server_errors_and_succeeds() {
    let fake = FakeCloud::start(|n, _| match n {
        0 => Reply::json(500, json!({"error": {"message": "boom"}})),
        1 => Reply::json(503, json!({"error": {"message": "overloaded"}})),
        _ => Reply::json(200, completion("m", "third time")),
    })
    .await;
    let (cloud, metrics) = cloud(&config(&fake.url()));

    let answer = cloud.complete(json!({"messages": []})).await.expect("success after retries");

    assert_eq!(answer["choices"][0]["message"]["content"], "third time");
    assert_eq!(fake.hits(CHAT), 3);
    assert_eq!(calls(&metrics, "ok"), 1.0, "one call, however many attempts");
    assert_eq!(cloud.status().consecutive_failures, 0);
}

#[tokio::test]
async fn gives_up_after_the_configured_retries() {
    let fake = FakeCloud::start(|_, _| Reply::json(502, json!({"error": {"message": "bad gateway"}}))).await;
    let (cloud, metrics) = cloud(&config(&fake.url()));

    let err = cloud.complete(json!({"messages": []})).await.expect_err("always 502");

    assert!(
        matches!(&err, CloudError::Status { status: 502, message } if message == "bad gateway"),
        "{err:?}"
    );
    assert!(err.is_unreachable());
    assert_eq!(fake.hits(CHAT), 3, "one attempt and two retries");
    assert_eq!(calls(&metrics, "status_5xx"), 1.0);
}

#[tokio::test]
async fn a_client_error_is_not_retried_and_keeps_the_cloud_message() {
    let fake = FakeCloud::start(|_, _| {
        Reply::json(
            400,
            json!({"error": {"message": "messages: field required", "type": "invalid_request_error"}}),
        )
    })
    .await;
    let (cloud, metrics) = cloud(&config(&fake.url()));

    let err = cloud.complete(json!({"model": "x"})).await.expect_err("400");

    match &err {
        CloudError::Status { status, message } => {
            assert_eq!((*status, message.as_str()), (400, "messages: field required"));
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert!(!err.is_unreachable(), "a bad request is no reason to fall back");
    assert_eq!(fake.hits(CHAT), 1);
    assert_eq!(cloud.connectivity(), Connectivity::Online, "a 400 proves the cloud is reachable");
    assert_eq!(calls(&metrics, "status_4xx"), 1.0);
}

#[tokio::test]
async fn honours_a_short_retry_after_and_gives_up_on_a_long_one() {
    let fake = FakeCloud::start(|n, r| match (r.json()["messages"][0].as_str(), n) {
        (Some("short"), 0) => {
            Reply::json_with(429, &[("Retry-After", "0")], json!({"error": {"message": "slow"}}))
        }
        (Some("short"), _) => Reply::json(200, completion("m", "after waiting")),
        _ => Reply::json_with(429, &[("Retry-After", "3600")], json!({"error": {"message": "quota"}})),
    })
    .await;
    let (cloud, metrics) = cloud(&config(&fake.url()));

    let answer = cloud.complete(json!({"messages": ["short"]})).await.expect("retried after 429");
    assert_eq!(answer["choices"][0]["message"]["content"], "after waiting");
    assert_eq!(fake.hits(CHAT), 2);

    let started = Instant::now();
    let err = cloud.complete(json!({"messages": ["long"]})).await.expect_err("429 for an hour");
    assert!(started.elapsed() < Duration::from_millis(500), "no hour-long wait: {:?}", started.elapsed());
    assert!(matches!(err, CloudError::Status { status: 429, .. }), "{err:?}");
    assert!(err.is_unreachable());
    assert_eq!(fake.hits(CHAT), 3, "a Retry-After beyond the backoff cap is not waited for");
    assert_eq!(calls(&metrics, "rate_limited"), 1.0);
}

#[tokio::test]
async fn a_cloud_that_never_answers_times_out_in_time() {
    let fake = FakeCloud::start(|_, _| Reply::hang()).await;
    let mut config = config(&fake.url());
    config.retries = 0;
    config.timeout = Duration::from_millis(300);
    let (cloud, metrics) = cloud(&config);

    let started = Instant::now();
    let err = cloud.complete(json!({"messages": []})).await.expect_err("no answer");

    let took = started.elapsed();
    assert!(matches!(err, CloudError::Timeout("response")), "{err:?}");
    assert!(err.is_unreachable());
    assert!(took >= Duration::from_millis(290) && took < Duration::from_millis(900), "took {took:?}");
    assert_eq!(calls(&metrics, "timeout"), 1.0);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let mut fake = FakeCloud::start(|_, _| Reply::hang()).await;
    fake.stop();
    let mut config = config(&fake.url());
    config.retries = 1;
    let (cloud, _) = cloud(&config);

    let err = cloud.complete(json!({"messages": []})).await.expect_err("refused");

    assert!(matches!(&err, CloudError::Connect(_)), "{err:?}");
    assert!(err.is_unreachable());
    assert_eq!(cloud.status().consecutive_failures, 1, "one failed call, though two attempts");
}

#[tokio::test]
async fn an_answer_without_choices_is_invalid() {
    let fake = FakeCloud::start(|_, _| Reply::json(200, json!({"id": "x", "object": "list"}))).await;
    let (cloud, metrics) = cloud(&config(&fake.url()));

    let err = cloud.complete(json!({"messages": []})).await.expect_err("no choices");

    assert!(matches!(err, CloudError::InvalidResponse(_)), "{err:?}");
    assert_eq!(fake.hits(CHAT), 1, "a malformed answer is not retried");
    assert_eq!(calls(&metrics, "invalid_response"), 1.0);
}

#[tokio::test]
async fn a_request_that_is_not_an_object_is_refused_before_sending() {
    let fake = FakeCloud::start(|_, _| Reply::json(200, completion("m", "x"))).await;
    let (cloud, _) = cloud(&config(&fake.url()));

    let err = cloud.complete(json!(["not", "an", "object"])).await.expect_err("not an object");

    assert!(matches!(err, CloudError::Client(_)), "{err:?}");
    assert_eq!(fake.requests().len(), 0);
}

#[tokio::test]
async fn rereads_a_rotated_key_once_after_401() {
    let fake = FakeCloud::start(|_, r| match r.header("authorization") {
        Some("Bearer new-key") => Reply::json(200, completion("m", "welcome")),
        _ => Reply::json(401, json!({"error": {"message": "invalid api key"}})),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = write(dir.path(), "key", "old-key\n");
    let mut config = config(&fake.url());
    config.api_key_file = Some(key_file.clone());
    let (cloud, _) = cloud(&config);
    write(dir.path(), "key", "new-key\n");

    let answer = cloud.complete(json!({"messages": []})).await.expect("the new key works");

    assert_eq!(answer["choices"][0]["message"]["content"], "welcome");
    let keys: Vec<_> = fake.requests().iter().map(|r| r.header("authorization").map(str::to_owned)).collect();
    assert_eq!(keys, [Some("Bearer old-key".to_owned()), Some("Bearer new-key".to_owned())]);
}

#[tokio::test]
async fn the_key_never_appears_in_errors_status_or_debug_output() {
    // A cloud that quotes the key back in its error message.
    let fake = FakeCloud::start(|_, r| {
        let auth = r.header("authorization").unwrap_or_default().to_owned();
        Reply::json(401, json!({"error": {"message": format!("key {auth} is not valid")}}))
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(&fake.url());
    config.api_key_file = Some(write(dir.path(), "key", "sk-very-secret\n"));
    let (cloud, _) = cloud(&config);

    let err = cloud.complete(json!({"messages": []})).await.expect_err("401");

    assert!(
        matches!(&err, CloudError::Status { status: 401, message } if message.contains("[redacted]")),
        "{err:?}"
    );
    let status = serde_json::to_string(&cloud.status()).expect("status serializes");
    for shown in [err.to_string(), format!("{err:?}"), status, format!("{cloud:?}")] {
        assert!(!shown.contains("sk-very-secret"), "the key leaked: {shown}");
    }
    assert_eq!(fake.hits(CHAT), 1, "the key file did not change, so no second try");
}
