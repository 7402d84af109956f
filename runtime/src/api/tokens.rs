//! `POST /tokenize` and `POST /detokenize`, in llama-server's shapes, with the loaded model's
//! vocabulary: `{"content": "...", "add_special": false, "with_pieces": false}` →
//! `{"tokens": [ids]}` (or `[{"id", "piece"}]` with pieces); `{"tokens": [ids]}` →
//! `{"content": "..."}`. Counting a chat's tokens: `usage.prompt_tokens` of a request is the
//! count of its messages under the chat template, which `/tokenize` of the raw text is not.

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;

#[derive(Deserialize)]
struct TokenizeRequest {
    content: String,
    #[serde(default)]
    add_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<i32>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => {
            ApiError::InvalidRequest { message: format!("invalid request: {err}"), param: None }
        }
        _ => ApiError::InvalidJson(err.to_string()),
    })
}

/// `POST /tokenize`.
pub async fn tokenize(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let request: TokenizeRequest = parse(&body)?;
    let tokens = state.engine.tokenize(request.content, request.add_special).await?;
    Ok(Json(if request.with_pieces {
        json!({ "tokens": tokens })
    } else {
        json!({ "tokens": tokens.iter().map(|t| t.id).collect::<Vec<_>>() })
    }))
}

/// `POST /detokenize`.
pub async fn detokenize(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let request: DetokenizeRequest = parse(&body)?;
    let content = state.engine.detokenize(request.tokens).await?;
    Ok(Json(json!({ "content": content })))
}
