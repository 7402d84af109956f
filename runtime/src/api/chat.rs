//! `POST /v1/chat/completions`, streamed or not.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::ApiError;
use super::openai::{self, ChatRequest};
use super::AppState;
use crate::engine::{Event, FinishReason, ModelInfo, TokenLogprob};

/// Tells the caller which route answered.
pub const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-outpost-route");

/// Identifies one completion in its response or chunks.
struct Meta {
    id: String,
    created: u64,
    model: Arc<ModelInfo>,
}

impl Meta {
    fn new(model: Arc<ModelInfo>) -> Self {
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Self { id: format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32), created, model }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, logprobs: Option<Value>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model.id,
            "system_fingerprint": null,
            "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
        })
    }
}

/// The handler.
pub async fn completions(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let request = ChatRequest::parse(&body)?;
    let stream = request.streaming();
    let include_usage = request.include_usage();
    let generate = request.into_generate(&state.config.generation)?;
    let mut events = state.engine.submit(generate)?;

    // The first event decides between an error status and a 200: a prompt over the context
    // gets its 400 even when streaming.
    let model = match events.recv().await {
        Some(Event::Started { model, .. }) => model,
        Some(Event::Failed(err)) => return Err(err.into()),
        Some(_) | None => return Err(ApiError::ShuttingDown),
    };
    let meta = Meta::new(model);
    let mut response = if stream {
        stream_response(meta, events, include_usage).into_response()
    } else {
        Json(collect(&meta, events).await?).into_response()
    };
    response.headers_mut().insert(ROUTE_HEADER, HeaderValue::from_static("local"));
    Ok(response)
}

/// Waits for the whole answer.
async fn collect(meta: &Meta, mut events: UnboundedReceiver<Event>) -> Result<Value, ApiError> {
    let mut content = String::new();
    let mut logprobs: Vec<TokenLogprob> = Vec::new();
    let mut wants_logprobs = false;
    while let Some(event) = events.recv().await {
        match event {
            Event::Started { .. } => {}
            Event::Token { text, logprob } => {
                content.push_str(&text);
                if let Some(l) = logprob {
                    wants_logprobs = true;
                    logprobs.push(l);
                }
            }
            Event::Failed(err) => return Err(err.into()),
            Event::Done(done) => {
                if done.finish_reason == FinishReason::Cancelled {
                    return Err(ApiError::ShuttingDown);
                }
                return Ok(json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model.id,
                    "system_fingerprint": null,
                    "choices": [{
                        "index": 0,
                        "message": { "role": "assistant", "content": content },
                        "logprobs": if wants_logprobs { openai::logprobs(&logprobs) } else { Value::Null },
                        "finish_reason": openai::finish_reason(done.finish_reason),
                    }],
                    "usage": openai::usage(&done),
                    "timings": openai::timings(&done),
                }));
            }
        }
    }
    Err(ApiError::ShuttingDown)
}

/// Server-sent events: a role chunk, content chunks, a finish chunk, an optional usage chunk,
/// then `[DONE]`. Dropping the body (client gone) drops `events`, which cancels generation.
fn stream_response(
    meta: Meta,
    mut events: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let data = |v: Value| SseEvent::default().data(v.to_string());
    let body = async_stream::stream! {
        yield Ok(data(meta.chunk(json!({ "role": "assistant", "content": "" }), None, None)));
        while let Some(event) = events.recv().await {
            match event {
                Event::Started { .. } => {}
                Event::Token { text, logprob } => {
                    if text.is_empty() && logprob.is_none() {
                        continue;
                    }
                    let logprobs = logprob.map(|l| openai::logprobs(std::slice::from_ref(&l)));
                    yield Ok(data(meta.chunk(json!({ "content": text }), None, logprobs)));
                }
                Event::Failed(err) => {
                    let err = ApiError::from(err);
                    yield Ok(data(err.body()));
                    return;
                }
                Event::Done(done) => {
                    if done.finish_reason == FinishReason::Cancelled {
                        yield Ok(data(ApiError::ShuttingDown.body()));
                        return;
                    }
                    let reason = openai::finish_reason(done.finish_reason);
                    yield Ok(data(meta.chunk(json!({}), Some(reason), None)));
                    if include_usage {
                        let mut last = meta.chunk(json!({}), None, None);
                        last["choices"] = json!([]);
                        last["usage"] = openai::usage(&done);
                        last["timings"] = openai::timings(&done);
                        yield Ok(data(last));
                    }
                    yield Ok(SseEvent::default().data("[DONE]"));
                    return;
                }
            }
        }
    };
    Sse::new(body).keep_alive(KeepAlive::default())
}
