//! `/admin/cache/*`: the `outpost cache` operations through the daemon (root or
//! `api.admin_uids`): `GET stats`, `POST clear` (`{"older_than": "7d"}` optional),
//! `GET export` (JSONL), `POST import` (JSONL body, embedded with the daemon's router).

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::socket::Peer;
use super::AppState;
use crate::cache::{ops, Cache};

fn admin(state: &AppState, peer: &Peer, what: &'static str) -> Result<Cache, ApiError> {
    super::require_admin(state, peer, what)?;
    state
        .cache
        .clone()
        .ok_or(ApiError::Refused("the response cache is disabled or could not be opened".into()))
}

fn failed(err: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidRequest { message: err.to_string(), param: None }
}

/// `GET /admin/cache/stats`.
pub async fn stats(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<Value>, ApiError> {
    let cache = admin(&state, &peer, "cache stats")?;
    let stats = cache.stats().await.map_err(failed)?;
    Ok(Json(serde_json::to_value(stats).unwrap_or_default()))
}

/// `POST /admin/cache/clear`.
pub async fn clear(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let cache = admin(&state, &peer, "cache clear")?;
    let older_than = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        match v.get("older_than").and_then(Value::as_str) {
            Some(text) => Some(humantime::parse_duration(text).map_err(|e| ApiError::InvalidRequest {
                message: format!("older_than: {e}"),
                param: Some("older_than"),
            })?),
            None => None,
        }
    };
    let removed = cache.clear(older_than).await.map_err(failed)?;
    Ok(Json(json!({ "removed": removed })))
}

/// `GET /admin/cache/export`: every live entry as JSONL.
pub async fn export(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Response, ApiError> {
    let cache = admin(&state, &peer, "cache export")?;
    let config = cache.config().clone();
    let lines = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        ops::export_to(&config, &mut out, &config.path).map(|_| out)
    })
    .await
    .map_err(failed)?
    .map_err(failed)?;
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], lines).into_response())
}

/// `POST /admin/cache/import`: JSONL in the body; prompts are embedded by the daemon's router.
pub async fn import(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let cache = admin(&state, &peer, "cache import")?;
    let report = import_jsonl(&state, &cache, body).await.map_err(failed)?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

/// Imports JSONL lines (as `outpost cache import` reads them) into the running daemon's cache,
/// embedding each prompt with the daemon's router: the one path for `POST /admin/cache/import`
/// and the fleet's `cache.import`.
pub async fn import_jsonl(state: &AppState, cache: &Cache, body: Bytes) -> Result<ops::ImportReport, String> {
    let config = cache.config().clone();
    let router = state.router.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let source = std::path::Path::new("(request body)");
        let space = router.as_ref().map(|r| ops::embedding_space(&r.info().name, &r.info().version));
        ops::import_from(&config, std::io::Cursor::new(body), source, space.as_deref(), |text| {
            match &router {
                // On a blocking thread: waiting for the router's owner thread is fine here.
                Some(r) => runtime.block_on(r.score(text.to_owned())).map(|s| s.embedding),
                None => Ok(Vec::new()),
            }
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}
