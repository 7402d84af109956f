//! `POST /v1/embeddings`: sentence embeddings from the router's encoder (all-MiniLM-L6-v2,
//! mean-pooled, L2-normalised, 384 dimensions; inputs cut at the router's token limit), the
//! same vectors the semantic cache uses. `/v1/models` names the model.

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;

/// Most inputs per request.
const MAX_INPUTS: usize = 256;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: Input,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

/// The embedding model's id, as `/v1/models` lists it.
pub fn model_id(state: &AppState) -> Option<String> {
    state.router.as_ref().map(|r| format!("{}-embeddings", r.info().name))
}

/// The handler.
pub async fn embeddings(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let request: EmbeddingsRequest = serde_json::from_slice(&body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => {
            ApiError::InvalidRequest { message: format!("invalid request: {err}"), param: Some("input") }
        }
        _ => ApiError::InvalidJson(err.to_string()),
    })?;
    let Some(router) = state.router.clone() else {
        return Err(ApiError::Refused("embeddings need the router, which is not loaded".into()));
    };
    if request.encoding_format.as_deref().is_some_and(|f| f != "float") {
        return Err(ApiError::InvalidRequest {
            message: "only encoding_format \"float\" is supported".into(),
            param: Some("encoding_format"),
        });
    }
    let inputs = match request.input {
        Input::One(s) => vec![s],
        Input::Many(v) => v,
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::InvalidRequest {
            message: format!("input must hold 1 to {MAX_INPUTS} strings"),
            param: Some("input"),
        });
    }
    let mut data = Vec::with_capacity(inputs.len());
    let mut tokens = 0usize;
    for (index, text) in inputs.into_iter().enumerate() {
        let score = router.score(text).await.map_err(|e| ApiError::Refused(format!("router: {e}")))?;
        tokens += score.tokens;
        let mut embedding = score.embedding;
        if let Some(d) = request.dimensions {
            if d == 0 || d > embedding.len() {
                return Err(ApiError::InvalidRequest {
                    message: format!("dimensions must be between 1 and {}", embedding.len()),
                    param: Some("dimensions"),
                });
            }
            // Matryoshka-style truncation does not suit MiniLM; refuse rather than mislead.
            if d != embedding.len() {
                return Err(ApiError::InvalidRequest {
                    message: format!("this model gives {} dimensions only", embedding.len()),
                    param: Some("dimensions"),
                });
            }
            embedding.truncate(d);
        }
        data.push(json!({ "object": "embedding", "index": index, "embedding": embedding }));
    }
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": request.model.or_else(|| model_id(&state)),
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    })))
}
