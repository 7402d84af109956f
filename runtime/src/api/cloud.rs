//! Cloud answers: the cloud's response passed through, with the `outpost` report added.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::StreamExt;
use serde_json::Value;

use super::error::ApiError;
use super::report::Report;
use crate::cloud::CloudStream;

/// A non-streamed cloud response with the report added.
pub fn body(mut response: Value, report: &Report) -> Value {
    if let Some(object) = response.as_object_mut() {
        object.insert("outpost".into(), report.json());
    }
    response
}

/// The cloud's chunks passed through as they arrive; the chunk carrying `finish_reason` also
/// carries the `outpost` report. A cloud failure mid-stream ends the stream with an error
/// chunk (never a silently truncated answer).
pub fn stream(
    mut upstream: CloudStream,
    report: Report,
    remember: Option<super::cached::Remember>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let data = |v: &Value| SseEvent::default().data(v.to_string());
    let body = async_stream::stream! {
        let mut reported = false;
        let mut content = String::new();
        let mut model = String::from("cloud");
        while let Some(item) = upstream.next().await {
            match item {
                Ok(mut chunk) => {
                    if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
                        content.push_str(text);
                    }
                    if let Some(m) = chunk["model"].as_str() {
                        model = m.to_owned();
                    }
                    let finished = chunk["choices"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| !c["finish_reason"].is_null()));
                    if finished && !reported {
                        if let Some(object) = chunk.as_object_mut() {
                            object.insert("outpost".into(), report.json());
                            reported = true;
                        }
                    }
                    yield Ok(data(&chunk));
                }
                Err(err) => {
                    tracing::warn!(%err, "cloud stream failed");
                    yield Ok(data(&ApiError::Cloud(err).body()));
                    return;
                }
            }
        }
        // The whole answer arrived (the stream reached [DONE]): keep it.
        if let Some(remember) = remember {
            remember.keep(content, model, crate::cache::Origin::Cloud, 1.0);
        }
        yield Ok(SseEvent::default().data("[DONE]"));
    };
    Sse::new(body).keep_alive(KeepAlive::default())
}
