//! `POST /v1/chat/completions`: route the request, then answer locally (streamed or not), in
//! the cloud (passed through), or refuse with a clear error.
//!
//! Order of work, so that routing costs the caller as little as possible:
//! 1. validate the request; snapshot the signals (power, connectivity);
//! 2. if the policy could answer locally, queue the local generation now: prefill starts while
//!    the router scores the prompt;
//! 3. score the prompt (router owner thread), decide (pure policy);
//! 4. local: keep the generation (a prompt over the context is decided again, now with its
//!    token count); cloud: drop it (cancelling it) and call the cloud, falling back to local
//!    if the cloud turns out unreachable and the request did not force the cloud;
//! 5. non-streamed local answers below `policy.min_confidence` are answered by the cloud
//!    instead (cascade), when the cloud is allowed.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use super::cached::{self, Remember};
use super::error::ApiError;
use super::openai::{ChatRequest, Meta};
use super::report::{Report, ROUTE_HEADER};
use super::{cloud, local, AppState};
use crate::cache::{self as response_cache, Origin, Query, ReadMode};
use crate::cascade;
use crate::cloud::Connectivity;
use crate::engine::{ChatMessage, Event, Generate, GenerateError};
use crate::metrics::RouteLabels;
use crate::policy::{self, Decision, Inputs, Refusal, Route, RouteOverride};

/// Everything one request's routing needs.
struct Request {
    state: AppState,
    /// The body as sent, forwarded to the cloud.
    raw: Value,
    generate: Generate,
    stream: bool,
    include_usage: bool,
    inputs: Inputs,
    /// Keeps the answer in the response cache, when there is one.
    remember: Option<Remember>,
    /// The answer may be a tool call (`Some(parallel_tool_calls)`).
    tools: Option<bool>,
}

/// The handler.
pub async fn completions(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let request = ChatRequest::parse(&body)?;
    let raw: Value = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let options = request.outpost.unwrap_or_default();
    let stream = request.streaming();
    let include_usage = request.include_usage();
    // Tool calls: no cache (neither read nor written), no cascade, the answer parsed into calls.
    let tools = request.tools_active();
    let mut generate = request.into_generate(&state.config.generation)?;
    // The cache key is the request as asked, before any power-mode limit.
    let query = state
        .cache
        .as_ref()
        .filter(|_| tools.is_none())
        .map(|_| Query::new(&generate.messages, &generate.sampling));
    let read_mode =
        response_cache::read_mode(&state.config.cache, state.cloud.connectivity(), &generate.sampling);

    let inputs = Inputs {
        complexity: None,
        prompt_tokens: None,
        local_context: state.config.model.context,
        max_tokens: generate.sampling.max_tokens,
        power: *state.power.borrow(),
        connectivity: state.cloud.connectivity(),
        request: options,
    };

    // Before the router: what the policy decides knowing nothing about the prompt tells whether
    // a local answer is possible and its limits. Start it now; it is cancelled if the answer
    // goes to the cloud.
    let pre = decide(&state, &inputs);

    // An exact cache hit answers before anything else runs (router, generation). Requests that
    // force a route skip the cache.
    let forced = matches!(options.route, Some(RouteOverride::Local | RouteOverride::Cloud));
    let use_cache = !forced && !matches!(read_mode, ReadMode::Off);
    if let (Some(cache), Some(query), true) = (&state.cache, &query, use_cache) {
        if let Some(hit) = cached::lookup(cache, query.clone(), ReadMode::Exact, &state.metrics).await {
            let mut report = Report::new(&pre, None, inputs.connectivity);
            cached::report_hit(&mut report, &hit);
            let response = cached::respond(&hit, &report, stream, include_usage);
            return Ok(with_route(response, &report, &state));
        }
    }

    generate.sampling.max_tokens = pre.limits.max_tokens;
    generate.threads = pre.limits.threads;
    let early = (pre.route == Route::Local && options.route != Some(RouteOverride::Cloud))
        .then(|| state.engine.submit(generate.clone()));

    let score = match &state.router {
        Some(router) => match router.score(routing_text(&generate.messages)).await {
            Ok(score) => Some(score),
            Err(err) => {
                tracing::warn!(%err, "router failed; routing without a complexity");
                None
            }
        },
        None => None,
    };
    let inputs = Inputs { complexity: score.as_ref().map(|s| s.complexity), ..inputs };
    let decision = decide(&state, &inputs);
    let mut report = Report::new(&decision, score.as_ref(), inputs.connectivity);
    if state.router.is_some() && score.is_none() {
        report.reasons.push("router: no score (router failed or busy)".into());
    }

    // Semantic hits (offline) need the router's embedding.
    let query = query.map(|q| match &score {
        Some(s) => q.with_embedding(s.embedding.clone()),
        None => q,
    });
    if let (Some(cache), Some(query), true, ReadMode::Semantic) = (&state.cache, &query, use_cache, read_mode)
    {
        if let Some(hit) = cached::lookup(cache, query.clone(), read_mode, &state.metrics).await {
            drop(early);
            cached::report_hit(&mut report, &hit);
            let response = cached::respond(&hit, &report, stream, include_usage);
            return Ok(with_route(response, &report, &state));
        }
    }
    let remember = match (&state.cache, query) {
        (Some(cache), Some(query)) => Some(Remember {
            cache: cache.clone(),
            query,
            private: response_cache::is_private(&state.config.policy, &options),
            metrics: state.metrics.clone(),
            tasks: state.tasks.clone(),
        }),
        _ => None,
    };
    let request = Request { state, raw, generate, stream, include_usage, inputs, remember, tools };

    let result = match decision.route {
        Route::Local | Route::Cache => {
            let events = match early {
                Some(events) => events,
                None => request.state.engine.submit(request.generate.clone()),
            };
            match events {
                Ok(events) => request.local(events, decision, report).await,
                Err(err) if decision.cloud_allowed => {
                    report.route = Route::Cloud;
                    report.reasons.push(format!("local engine unavailable ({err}); sent to the cloud"));
                    request.cloud(report, false).await
                }
                Err(err) => Err(err.into()),
            }
        }
        Route::Cloud => {
            drop(early);
            let forced = options.route == Some(RouteOverride::Cloud);
            request.cloud(report, !forced).await
        }
        Route::Refuse => Err(refusal(&decision, None, inputs.connectivity)),
    };
    result
}

/// The routing decision for `prompt` as a chat request with default options would get it now
/// (the fleet's `route.explain`): complexity (absent without a router), route, reasons.
pub(crate) async fn explain(state: &AppState, prompt: &str) -> serde_json::Value {
    let score = match &state.router {
        Some(router) => router.score(prompt.to_owned()).await.ok(),
        None => None,
    };
    let inputs = Inputs {
        complexity: score.as_ref().map(|s| s.complexity),
        prompt_tokens: None,
        local_context: state.config.model.context,
        max_tokens: state.config.generation.max_tokens,
        power: *state.power.borrow(),
        connectivity: state.cloud.connectivity(),
        request: Default::default(),
    };
    let decision = decide(state, &inputs);
    serde_json::json!({
        "complexity": inputs.complexity,
        "route": decision.route,
        "reasons": decision.reasons,
        "threshold": decision.threshold,
        "power_mode": decision.power_mode,
        "connectivity": inputs.connectivity,
    })
}

fn decide(state: &AppState, inputs: &Inputs) -> Decision {
    policy::decide(inputs, &state.config.policy, &state.config.power, state.router_threshold)
}

/// The text the router scores: the last user message (what the user asks now), else all
/// message texts.
fn routing_text(messages: &[ChatMessage]) -> String {
    match messages.iter().rev().find(|m| m.role == "user") {
        Some(m) => m.content.clone(),
        None => messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
    }
}

/// The error for a refused request. Offline, it says so: the request may succeed once the
/// board is back online (and nothing was cached for it).
fn refusal(decision: &Decision, overflow: Option<GenerateError>, connectivity: Connectivity) -> ApiError {
    let mut why = decision.reasons.join("; ");
    if connectivity == Connectivity::Offline {
        if let Some(err) = overflow {
            why = format!("{err}; {why}");
        }
        return ApiError::OfflineNoCache(why);
    }
    match (decision.refusal, overflow) {
        (Some(Refusal::ContextTooLong), Some(err)) => ApiError::ContextTooLong(format!("{err}; {why}")),
        (Some(Refusal::ContextTooLong), None) => {
            ApiError::InvalidRequest { message: why, param: Some("messages") }
        }
        _ => ApiError::Refused(why),
    }
}

fn with_route(mut response: Response, report: &Report, state: &AppState) -> Response {
    response.headers_mut().insert(ROUTE_HEADER, report.header());
    state.metrics.routes.get_or_create(&RouteLabels { route: report.route.as_str().into() }).inc();
    response
}

impl Request {
    fn price(&self) -> Option<f64> {
        self.state.cloud.is_configured().then(|| self.state.cloud.price_per_1k_tokens())
    }

    /// Answers locally from the queued generation.
    async fn local(
        self,
        mut events: UnboundedReceiver<Event>,
        decision: Decision,
        mut report: Report,
    ) -> Result<Response, ApiError> {
        // The first event: the prompt fits (Started), or not (its token count is now known).
        let model = match events.recv().await {
            Some(Event::Started { model, .. }) => model,
            Some(Event::Failed(err @ GenerateError::ContextOverflow { prompt_tokens, .. })) => {
                let inputs = Inputs { prompt_tokens: Some(prompt_tokens), ..self.inputs };
                let again = decide(&self.state, &inputs);
                report.redecide(&again);
                return match again.route {
                    Route::Cloud => self.cloud(report, false).await,
                    _ => Err(refusal(&again, Some(err), inputs.connectivity)),
                };
            }
            Some(Event::Failed(err)) => return Err(err.into()),
            Some(_) | None => return Err(ApiError::ShuttingDown),
        };
        let meta = Meta::new(model.id.clone());
        if let Some(parallel) = self.tools {
            let response = if self.stream {
                let metrics = self.state.metrics.clone();
                let (usage, price) = (self.include_usage, self.price());
                super::tool_stream::stream(meta, events, parallel, usage, report.clone(), metrics, price)
                    .into_response()
            } else {
                let answer = local::collect(events).await?;
                local::count_answer(&self.state.metrics, &answer.done, self.price());
                Json(super::tools::answer(answer.body(&meta, &report), parallel)).into_response()
            };
            return Ok(with_route(response, &report, &self.state));
        }
        if self.stream {
            let sse = local::stream(
                meta,
                events,
                self.include_usage,
                report.clone(),
                self.state.metrics.clone(),
                self.price(),
                self.remember.clone(),
            );
            return Ok(with_route(sse.into_response(), &report, &self.state));
        }

        let answer = local::collect(events).await?;
        let confidence = answer.confidence();
        report.confidence = Some(confidence.score);
        report.checks = confidence.checks.clone();
        let min = self.state.config.policy.min_confidence;
        let verdict = cascade::decide(&confidence, min, decision.cascade, self.state.cloud.connectivity());
        if let cascade::Verdict::Cascade { reason } = verdict {
            report.reasons.push(reason);
            match self.state.cloud.complete(self.raw.clone()).await {
                Ok(response) => {
                    self.state.metrics.cascade_checked.inc();
                    self.state.metrics.cascaded.inc();
                    if let Some(remember) = self.remember.clone() {
                        keep_cloud_answer(remember, &response);
                    }
                    report.route = Route::Cloud;
                    report.cascaded = true;
                    let body = cloud::body(response, &report);
                    return Ok(with_route(Json(body).into_response(), &report, &self.state));
                }
                Err(err) => {
                    tracing::warn!(%err, "cascade to the cloud failed; answering locally");
                    report.reasons.push(format!("cascade failed ({}); kept the local answer", err.kind()));
                }
            }
        }
        local::count_answer(&self.state.metrics, &answer.done, self.price());
        if let Some(remember) = self.remember.clone() {
            remember.keep(answer.content.clone(), meta.model.clone(), Origin::Local, confidence.score);
        }
        let body = answer.body(&meta, &report);
        Ok(with_route(Json(body).into_response(), &report, &self.state))
    }

    /// Answers in the cloud. `fallback`: a cloud that turns out unreachable hands the request
    /// to the local model (when the prompt may be answered locally).
    async fn cloud(self, mut report: Report, fallback: bool) -> Result<Response, ApiError> {
        report.route = Route::Cloud;
        let result = if self.stream {
            self.state
                .cloud
                .stream(self.raw.clone())
                .await
                .map(|s| cloud::stream(s, report.clone(), self.remember.clone()).into_response())
        } else {
            self.state.cloud.complete(self.raw.clone()).await.map(|r| {
                if let Some(remember) = self.remember.clone() {
                    keep_cloud_answer(remember, &r);
                }
                Json(cloud::body(r, &report)).into_response()
            })
        };
        match result {
            Ok(response) => Ok(with_route(response, &report, &self.state)),
            Err(err) if fallback && err.is_unreachable() && self.local_possible() => {
                tracing::warn!(%err, "cloud unreachable; answering locally");
                report.route = Route::Local;
                report.reasons.push(format!("cloud unreachable ({}); answered locally", err.kind()));
                let events = self.state.engine.submit(self.generate.clone())?;
                // No second cascade: the cloud was just tried.
                let decision =
                    Decision { cloud_allowed: false, cascade: false, ..decide(&self.state, &self.inputs) };
                Box::pin(self.local(events, decision, report)).await
            }
            Err(err) => Err(ApiError::Cloud(err)),
        }
    }

    fn local_possible(&self) -> bool {
        self.inputs.prompt_tokens.is_none_or(|n| n < self.inputs.local_context)
    }
}

/// Keeps a non-streamed cloud answer (trusted: the cloud model is the strong one).
fn keep_cloud_answer(remember: Remember, response: &Value) {
    let content = response["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    let model = response["model"].as_str().unwrap_or("cloud");
    remember.keep(content.to_owned(), model.to_owned(), Origin::Cloud, 1.0);
}
