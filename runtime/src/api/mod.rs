//! The HTTP API on the Unix socket: OpenAI-compatible chat completions, model identity, health,
//! metrics and admin endpoints.

pub(crate) mod admin_cache;
mod cached;
pub mod chat;
mod cloud;
mod completions;
mod embeddings;
pub mod error;
mod local;
mod ollama;
pub mod openai;
pub mod report;
pub mod socket;
mod status;
mod tokens;
mod tool_stream;
pub(crate) mod tools;

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::{Metrics, RequestLabels};
use error::{ApiError, ErrorCode};
use socket::Peer;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The inference engine.
    pub engine: Engine,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Metrics, rendered by `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Uids allowed on `/admin/*` besides root.
    pub admin_uids: Arc<HashSet<u32>>,
    /// Cancelled when the daemon starts stopping: new completions get 503.
    pub shutdown: CancellationToken,
    /// The prompt router, if it loaded.
    pub router: Option<crate::router::Router>,
    /// Why the router is missing, when it is.
    pub router_error: Option<String>,
    /// The router's recommended complexity threshold (used when `policy.complexity_threshold`
    /// is unset).
    pub router_threshold: f32,
    /// The cloud LLM client.
    pub cloud: crate::cloud::Cloud,
    /// The latest power reading.
    pub power: tokio::sync::watch::Receiver<crate::power::PowerState>,
    /// The offline response cache, if enabled and opened.
    pub cache: Option<crate::cache::Cache>,
    /// Background work started by requests (cache writes): awaited at shutdown.
    pub tasks: tokio_util::task::TaskTracker,
    /// The fleet agent's connection, once started (`[mqtt]` configured). Only the watch, not
    /// the agent: the agent holds an `AppState`, and a cycle would keep the engine alive.
    pub fleet: Arc<std::sync::OnceLock<tokio::sync::watch::Receiver<outpost_common::mqtt::ConnectionState>>>,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/version", get(ollama::version))
        .route("/api/embed", post(ollama::embed))
        .route("/v1/models", get(models))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/reload", post(reload))
        .route("/v1/outpost/status", get(status::status))
        .route("/admin/cache/stats", get(admin_cache::stats))
        .route("/admin/cache/clear", post(admin_cache::clear))
        .route("/admin/cache/export", get(admin_cache::export))
        .route("/admin/cache/import", post(admin_cache::import))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(axum::middleware::from_fn(read_body_first))
        .with_state(state)
}

/// The largest request body read (chat requests with long conversations, cache imports).
pub const MAX_BODY: usize = 16 << 20;

/// Reads the whole request body (up to [`MAX_BODY`]) before anything answers: an error given
/// before the body is read (an unknown path, a wrong method, an admin refusal) would otherwise
/// close the connection under a client that sends its body after the headers, and it would
/// see a broken pipe instead of the answer.
async fn read_body_first(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(_) => ApiError::InvalidRequest {
            message: format!("the request body is larger than {MAX_BODY} bytes or could not be read"),
            param: None,
        }
        .into_response(),
    }
}

/// Counts every request by endpoint and status, and errors by code.
async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "other".to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    if endpoint == "/v1/chat/completions" {
        state.metrics.record_latency(started.elapsed().as_secs_f64());
    }
    let labels = RequestLabels { endpoint, status: response.status().as_u16() };
    state.metrics.requests.get_or_create(&labels).inc();
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        state.metrics.error(code);
    }
    response
}

async fn models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let mut data: Vec<_> = state
        .engine
        .model()
        .map(|info| {
            vec![serde_json::to_value(openai::ModelEntry {
                id: &info.id,
                object: "model",
                created: info.loaded_at,
                owned_by: "outpost",
                info: &info,
            })
            .unwrap_or_default()]
        })
        .unwrap_or_default();
    // The embedding model (`/v1/embeddings`): the router's sentence encoder.
    if let (Some(id), Some(router)) = (embeddings::model_id(&state), &state.router) {
        data.push(json!({
            "id": id, "object": "model", "created": 0, "owned_by": "outpost",
            "type": "embedding", "encoder": "all-MiniLM-L6-v2 (int8, mean-pooled, L2-normalised)",
            "dimensions": 384, "router": router.info(),
        }));
    }
    Json(json!({ "object": "list", "data": data }))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "stopping" }))).into_response();
    }
    match state.engine.model() {
        Some(info) => Json(json!({ "status": "ready", "model": info.id })).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "loading" }))).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

/// Loads the model at the configured path again and swaps it in; the old one serves meanwhile.
async fn reload(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&state, &peer, "reload")?;
    tracing::info!(uid = ?peer.uid, "reload requested");
    let info = state.engine.load().await.map_err(|err| {
        tracing::error!(%err, "reload failed; keeping the current model");
        ApiError::ReloadFailed(err)
    })?;
    Ok(Json(json!({ "status": "reloaded", "model": *info })))
}

/// `/admin/*` is for root and `api.admin_uids` (from the socket's peer credentials).
fn require_admin(state: &AppState, peer: &Peer, what: &'static str) -> Result<(), ApiError> {
    if peer.uid.is_some_and(|uid| uid == 0 || state.admin_uids.contains(&uid)) {
        return Ok(());
    }
    tracing::warn!(uid = ?peer.uid, pid = ?peer.pid, what, "refused admin request");
    Err(ApiError::Forbidden("/admin/*"))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("{} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(method: Method, request: Request) -> Response {
    let mut response = ApiError::NotFound(format!("{method} {}", request.uri().path())).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
