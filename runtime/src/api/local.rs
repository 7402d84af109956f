//! Local answers from the engine's events: collected into one response, or streamed as
//! server-sent events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::ApiError;
use super::openai::{self, Meta};
use super::report::Report;
use crate::cascade;
use crate::engine::{Completion, Event, FinishReason, TokenLogprob};
use crate::metrics::Metrics;

/// A whole local answer.
pub struct Answer {
    /// The text.
    pub content: String,
    /// Token log-probabilities, when the client asked for them.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Counts, timings and every token's log-probability.
    pub done: Completion,
}

impl Answer {
    /// The answer's confidence.
    pub fn confidence(&self) -> cascade::Confidence {
        cascade::confidence(&self.done.token_logprobs, &self.content, self.done.finish_reason)
    }

    /// The OpenAI response body, with the `outpost` report.
    pub fn body(&self, meta: &Meta, report: &Report) -> Value {
        let logprobs = self.logprobs.as_deref().map_or(Value::Null, openai::logprobs);
        let mut body =
            meta.completion(&self.content, logprobs, openai::finish_reason(self.done.finish_reason));
        body["usage"] = openai::usage(&self.done);
        body["timings"] = openai::timings(&self.done);
        body["outpost"] = report.json();
        body
    }
}

/// Waits for the whole answer.
pub async fn collect(mut events: UnboundedReceiver<Event>) -> Result<Answer, ApiError> {
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
                return Ok(Answer { content, logprobs: wants_logprobs.then_some(logprobs), done });
            }
        }
    }
    Err(ApiError::ShuttingDown)
}

/// Counts a finished local answer: its confidence check and the cloud cost it avoided.
pub fn count_answer(metrics: &Metrics, done: &Completion, cloud_price_per_1k: Option<f64>) {
    metrics.cascade_checked.inc();
    if let Some(price) = cloud_price_per_1k {
        let tokens = f64::from(done.prompt_tokens + done.completion_tokens);
        metrics.cloud_cost_avoided.inc_by(tokens / 1000.0 * price);
    }
}

/// Server-sent events: a role chunk, content chunks, a finish chunk carrying the `outpost`
/// report (with the answer's confidence), an optional usage chunk, then `[DONE]`. Dropping the
/// body (client gone) drops `events`, which cancels generation.
///
/// Streamed answers are not cascaded: their tokens are already with the client when the
/// confidence is known. The finish chunk's `outpost.confidence` lets the app decide to ask
/// again with `"outpost": {"route": "cloud"}`.
pub fn stream(
    meta: Meta,
    mut events: UnboundedReceiver<Event>,
    include_usage: bool,
    mut report: Report,
    metrics: Arc<Metrics>,
    cloud_price_per_1k: Option<f64>,
    remember: Option<super::cached::Remember>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let data = |v: Value| SseEvent::default().data(v.to_string());
    let body = async_stream::stream! {
        yield Ok(data(meta.chunk(json!({ "role": "assistant", "content": "" }), None, None)));
        let mut content = String::new();
        while let Some(event) = events.recv().await {
            match event {
                Event::Started { .. } => {}
                Event::Token { text, logprob } => {
                    if text.is_empty() && logprob.is_none() {
                        continue;
                    }
                    content.push_str(&text);
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
                    let confidence = cascade::confidence(&done.token_logprobs, &content, done.finish_reason);
                    report.confidence = Some(confidence.score);
                    report.checks = confidence.checks.clone();
                    count_answer(&metrics, &done, cloud_price_per_1k);
                    if let Some(remember) = remember.clone() {
                        let model = meta.model.clone();
                        remember.keep(content.clone(), model, crate::cache::Origin::Local, confidence.score);
                    }
                    let reason = openai::finish_reason(done.finish_reason);
                    for event in closing(&meta, reason, &report, &done, include_usage) {
                        yield Ok(event);
                    }
                    return;
                }
            }
        }
    };
    Sse::new(body).keep_alive(KeepAlive::default())
}

/// A stream's last events: the finish chunk with the `outpost` report, the usage chunk (with
/// llama-server-style `timings`) when the client asked for it, and `[DONE]`.
pub(super) fn closing(
    meta: &Meta,
    reason: &str,
    report: &Report,
    done: &Completion,
    include_usage: bool,
) -> Vec<SseEvent> {
    let mut finish = meta.chunk(json!({}), Some(reason), None);
    finish["outpost"] = report.json();
    let mut events = vec![SseEvent::default().data(finish.to_string())];
    if include_usage {
        let mut last = meta.chunk(json!({}), None, None);
        last["choices"] = json!([]);
        last["usage"] = openai::usage(done);
        last["timings"] = openai::timings(done);
        events.push(SseEvent::default().data(last.to_string()));
    }
    events.push(SseEvent::default().data("[DONE]"));
    events
}
