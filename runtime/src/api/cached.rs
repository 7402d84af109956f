//! The response cache on the request path: answers served from it, and answers kept in it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::openai::Meta;
use super::report::Report;
use crate::cache::{Cache, Hit, HitKind, NewEntry, Origin, Query, ReadMode};
use crate::metrics::{Metrics, ResultLabels};
use crate::policy::Route;

/// Looks the request up; errors count as misses (the cache never fails a request).
pub async fn lookup(cache: &Cache, query: Query, mode: ReadMode, metrics: &Metrics) -> Option<Hit> {
    let started = Instant::now();
    let result = cache.lookup(query, mode).await;
    metrics.cache_lookup_seconds.observe(started.elapsed().as_secs_f64());
    let label = match &result {
        Ok(Some(hit)) if hit.kind == HitKind::Exact => "exact",
        Ok(Some(_)) => "semantic",
        Ok(None) => "miss",
        Err(err) => {
            tracing::warn!(%err, "cache lookup failed; treating it as a miss");
            "error"
        }
    };
    metrics.cache_lookups.get_or_create(&ResultLabels { result: label.into() }).inc();
    result.ok().flatten()
}

/// Marks the report as answered by the cache.
pub fn report_hit(report: &mut Report, hit: &Hit) {
    report.route = Route::Cache;
    let kind = if hit.kind == HitKind::Exact { "exact" } else { "semantic" };
    report.cache_hit = Some(kind);
    report.similarity = Some(hit.similarity);
    report.age_s = Some(hit.age.as_secs());
    report.reasons.insert(
        0,
        format!(
            "cache: {kind} hit (similarity {:.3}, {} s old, answered by {} {})",
            hit.similarity,
            hit.age.as_secs(),
            hit.origin.as_str(),
            hit.model
        ),
    );
}

/// The cached answer as a chat completion, streamed or not.
pub fn respond(hit: &Hit, report: &Report, stream: bool, include_usage: bool) -> Response {
    let meta = Meta::new(hit.model.clone());
    let usage = json!({ "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0 });
    if !stream {
        let mut body = meta.completion(&hit.answer, Value::Null, "stop");
        body["usage"] = usage;
        body["outpost"] = report.json();
        return Json(body).into_response();
    }
    let mut events = vec![
        meta.chunk(json!({ "role": "assistant", "content": "" }), None, None),
        meta.chunk(json!({ "content": hit.answer }), None, None),
    ];
    let mut finish = meta.chunk(json!({}), Some("stop"), None);
    finish["outpost"] = report.json();
    events.push(finish);
    if include_usage {
        let mut last = meta.chunk(json!({}), None, None);
        last["choices"] = json!([]);
        last["usage"] = usage;
        events.push(last);
    }
    let mut data: Vec<Result<SseEvent, Infallible>> =
        events.into_iter().map(|v| Ok(SseEvent::default().data(v.to_string()))).collect();
    data.push(Ok(SseEvent::default().data("[DONE]")));
    Sse::new(futures::stream::iter(data)).into_response()
}

/// What is needed to keep an answer once it is known.
#[derive(Clone)]
pub struct Remember {
    /// The cache.
    pub cache: Cache,
    /// The request as looked up.
    pub query: Query,
    /// The request asked to stay on the board.
    pub private: bool,
    /// For the stores metric.
    pub metrics: Arc<Metrics>,
    /// Tracks the write, so that shutdown waits for it.
    pub tasks: tokio_util::task::TaskTracker,
}

impl Remember {
    /// Stores the answer in the background (the store waits for an fsync; the caller does not).
    pub fn keep(self, answer: String, model: String, origin: Origin, confidence: f32) {
        let entry = NewEntry { query: self.query, answer, model, origin, confidence, private: self.private };
        self.tasks.clone().spawn(async move {
            let label = match self.cache.store(entry).await {
                Ok(outcome) => serde_json::to_value(outcome)
                    .ok()
                    .and_then(|v| v["result"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "stored".into()),
                Err(err) => {
                    tracing::warn!(%err, "cache store failed");
                    "error".into()
                }
            };
            self.metrics.cache_stores.get_or_create(&ResultLabels { result: label }).inc();
        });
    }
}
