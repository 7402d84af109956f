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
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let data = |v: &Value| SseEvent::default().data(v.to_string());
    let body = async_stream::stream! {
        let mut reported = false;
        while let Some(item) = upstream.next().await {
            match item {
                Ok(mut chunk) => {
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
        yield Ok(SseEvent::default().data("[DONE]"));
    };
    Sse::new(body).keep_alive(KeepAlive::default())
}
