//! Streamed calls: server-sent events as the cloud really splits them, and streams cut short.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::fake::{FakeCloud, Reply};
use super::{calls, cloud, config};
use crate::cloud::{CloudError, CloudStream};

/// Reads the whole stream: the chunks, then the error that ended it (if any).
async fn drain(mut stream: CloudStream) -> (Vec<serde_json::Value>, Option<CloudError>) {
    let mut chunks = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => chunks.push(chunk),
            Err(err) => {
                assert!(stream.next().await.is_none(), "nothing after an error");
                return (chunks, Some(err));
            }
        }
    }
    (chunks, None)
}

fn content(chunk: &serde_json::Value) -> &str {
    chunk["choices"][0]["delta"]["content"].as_str().unwrap_or("")
}

#[tokio::test]
async fn yields_each_event_however_the_bytes_are_split() {
    let fake = FakeCloud::start(|_, _| {
        Reply::sse(
            &[
                b": keep-alive\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\ndata: {\"choi",
                b"ces\":[{\"delta\":{\"content\":\"lo\"}}]}\r",
                b"\n\r\n: keep-alive\r\n\r\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\r\n",
                b"data: \"usage\":{\"total_tokens\":7}}\r\n\r\n",
                b"data: [DONE]\r\n\r\n",
            ],
            true,
        )
    })
    .await;
    let (cloud, metrics) = cloud(&config(&fake.url()));

    let stream = cloud
        .stream(json!({"messages": [{"role": "user", "content": "hi"}], "outpost": {}, "stream": true}))
        .await
        .expect("the stream starts");
    let (chunks, error) = drain(stream).await;

    assert!(error.is_none(), "{error:?}");
    assert_eq!(chunks.iter().map(content).collect::<Vec<_>>(), ["Hel", "lo", ""]);
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[2]["usage"]["total_tokens"], 7, "an event spread over two data lines");
    let sent = &fake.requests()[0];
    assert_eq!(sent.header("accept"), Some("text/event-stream"));
    assert_eq!(
        sent.json(),
        json!({"model": "cloud-model", "messages": [{"role": "user", "content": "hi"}], "stream": true})
    );
    assert_eq!(calls(&metrics, "ok"), 1.0);
}

#[tokio::test]
async fn a_stream_cut_short_ends_in_an_error_not_a_truncated_answer() {
    const FIRST: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
    let fake = FakeCloud::start(|n, _| match n {
        // The connection drops in the middle of the chunked body.
        0 => Reply::sse(&[FIRST, b"data: {\"choices\":[{\"del"], false),
        // The body ends cleanly, but before `[DONE]`.
        _ => Reply::sse(&[FIRST], true),
    })
    .await;
    let (cloud, metrics) = cloud(&config(&fake.url()));

    for attempt in 0..2 {
        let stream = cloud.stream(json!({"messages": []})).await.expect("the stream starts");
        let (chunks, error) = drain(stream).await;
        assert_eq!(chunks.iter().map(content).collect::<Vec<_>>(), ["Hel"], "attempt {attempt}");
        let error = error.expect("the stream ends in an error");
        assert!(matches!(error, CloudError::Connect(_)), "attempt {attempt}: {error:?}");
    }
    assert_eq!(fake.requests().len(), 2, "a broken stream is never retried");
    assert_eq!(calls(&metrics, "connect"), 2.0);
    assert_eq!(calls(&metrics, "ok"), 0.0);
}

#[tokio::test]
async fn a_silent_stream_times_out_after_the_idle_timeout() {
    let fake = FakeCloud::start(|_, _| Reply::sse_then_hang()).await;
    let (cloud, _) = cloud(&config(&fake.url()));

    let stream = cloud.stream(json!({"messages": []})).await.expect("the head arrives");
    let started = Instant::now();
    let (chunks, error) = drain(stream).await;

    assert!(chunks.is_empty());
    assert!(matches!(error, Some(CloudError::Timeout("idle"))), "{error:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(900), "took {took:?}");
}

#[tokio::test]
async fn retries_until_the_head_arrives() {
    let fake = FakeCloud::start(|n, _| match n {
        0 => Reply::json(503, json!({"error": {"message": "warming up"}})),
        _ => Reply::sse(&[b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"], true),
    })
    .await;
    let (cloud, _) = cloud(&config(&fake.url()));

    let (chunks, error) = drain(cloud.stream(json!({"messages": []})).await.expect("second try")).await;

    assert!(error.is_none(), "{error:?}");
    assert_eq!(chunks, [json!({"choices": []})]);
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn an_event_that_is_not_json_ends_the_stream() {
    let fake = FakeCloud::start(|_, _| Reply::sse(&[b"data: <html>oops</html>\n\n"], true)).await;
    let (cloud, metrics) = cloud(&config(&fake.url()));

    let (chunks, error) = drain(cloud.stream(json!({"messages": []})).await.expect("head")).await;

    assert!(chunks.is_empty());
    assert!(matches!(error, Some(CloudError::InvalidResponse(_))), "{error:?}");
    assert_eq!(calls(&metrics, "invalid_response"), 1.0);
}

#[tokio::test]
async fn a_stream_dropped_by_its_reader_counts_as_cancelled() {
    let fake = FakeCloud::start(|_, _| Reply::sse_then_hang()).await;
    let (cloud, metrics) = cloud(&config(&fake.url()));

    let stream = cloud.stream(json!({"messages": []})).await.expect("head");
    drop(stream);

    assert_eq!(calls(&metrics, "cancelled"), 1.0);
    assert_eq!(calls(&metrics, "ok"), 0.0);
}
