//! The Ollama API on the same socket, for the apps and frameworks that speak it. Each call is
//! translated onto the OpenAI path (one code path: routing, the response cache, cascade and the
//! `outpost` report all apply), and the answer back into Ollama's shapes:
//!
//! | Ollama | Outpost |
//! |---|---|
//! | `POST /api/chat` | `/v1/chat/completions`; NDJSON stream by default (`"stream": false` for one object) |
//! | `POST /api/generate` | `prompt` (+ `system`) as a chat; `"raw": true` → `/v1/completions` |
//! | `format: "json"` / a JSON schema | `response_format` `json_object` / `json_schema` |
//! | `options` | `temperature`, `top_p`, `top_k`, `min_p`, `seed`, `num_predict` → `max_tokens`, `stop`, `repeat_penalty`, `presence_penalty`, `frequency_penalty`; others ignored |
//! | `keep_alive` | accepted; the model stays loaded while the daemon runs |
//! | `GET /api/tags`, `POST /api/show`, `GET /api/ps`, `GET /api/version` | the loaded model |
//! | `POST /api/embed` | `/v1/embeddings` |
//!
//! Errors use Ollama's shape: `{"error": "message"}` with the same HTTP status.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Map, Value};

use super::AppState;

fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// An error in Ollama's shape.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

#[allow(clippy::result_large_err)] // the error is the response itself, built once
fn parse(body: &[u8]) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(error(StatusCode::BAD_REQUEST, "the body must be a JSON object")),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}"))),
    }
}

/// Ollama `options` and `format` onto an OpenAI body.
fn sampling_into(req: &Map<String, Value>, out: &mut Map<String, Value>) {
    if let Some(Value::Object(o)) = req.get("options") {
        for (from, to) in [
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("min_p", "min_p"),
            ("seed", "seed"),
            ("num_predict", "max_tokens"),
            ("stop", "stop"),
            ("repeat_penalty", "repeat_penalty"),
            ("presence_penalty", "presence_penalty"),
            ("frequency_penalty", "frequency_penalty"),
        ] {
            if let Some(v) = o.get(from) {
                // Ollama's num_predict -1 means "no limit": leave the default.
                if !(from == "num_predict" && v.as_i64().is_some_and(|n| n < 0)) {
                    out.insert(to.into(), v.clone());
                }
            }
        }
    }
    match req.get("format") {
        Some(Value::String(s)) if s == "json" => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(schema @ Value::Object(_)) => {
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}),
            );
        }
        _ => {}
    }
}

/// Runs an OpenAI-shaped request through the chat or completions handler.
async fn openai(state: &AppState, path: &str, body: Value) -> Response {
    let bytes = Bytes::from(body.to_string());
    let result = if path == "chat" {
        super::chat::completions(State(state.clone()), bytes).await
    } else {
        super::completions::completions(State(state.clone()), bytes).await
    };
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Turns an OpenAI error response into Ollama's shape; passes success through.
#[allow(clippy::result_large_err)]
async fn ollama_error(response: Response) -> Result<Response, Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let message = v["error"]["message"].as_str().unwrap_or("request failed").to_owned();
    Err(error(status, message))
}

/// What kind of answer to build.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Generate,
}

fn final_fields(model: &str, v: &mut Map<String, Value>, usage: &Value, timings: &Value, finish: &str) {
    let ns = |ms: &Value| (ms.as_f64().unwrap_or(0.0) * 1e6) as u64;
    v.insert("model".into(), json!(model));
    v.insert("created_at".into(), json!(rfc3339_now()));
    v.insert("done".into(), json!(true));
    v.insert("done_reason".into(), json!(finish));
    v.insert("prompt_eval_count".into(), usage["prompt_tokens"].clone());
    v.insert("eval_count".into(), usage["completion_tokens"].clone());
    v.insert("prompt_eval_duration".into(), json!(ns(&timings["prompt_ms"])));
    v.insert("eval_duration".into(), json!(ns(&timings["predicted_ms"])));
    v.insert("load_duration".into(), json!(0));
    v.insert("total_duration".into(), json!(ns(&timings["prompt_ms"]) + ns(&timings["predicted_ms"])));
}

fn piece(kind: Kind, model: &str, text: &str) -> Value {
    match kind {
        Kind::Chat => json!({"model": model, "created_at": rfc3339_now(),
                             "message": {"role": "assistant", "content": text}, "done": false}),
        Kind::Generate => {
            json!({"model": model, "created_at": rfc3339_now(), "response": text, "done": false})
        }
    }
}

/// The OpenAI answer in Ollama's shape: one object, or NDJSON lines.
async fn translate(response: Response, kind: Kind, stream: bool, chat_path: bool) -> Response {
    let response = match ollama_error(response).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let route = response.headers().get(super::report::ROUTE_HEADER).cloned();
    let mut out = if !stream {
        let body = axum::body::to_bytes(response.into_body(), 64 << 20).await.unwrap_or_default();
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        let model = v["model"].as_str().unwrap_or_default().to_owned();
        let text = if chat_path {
            v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
        } else {
            v["choices"][0]["text"].as_str().unwrap_or_default().to_owned()
        };
        let mut o = piece(kind, &model, &text).as_object().cloned().unwrap_or_default();
        let finish = v["choices"][0]["finish_reason"].as_str().unwrap_or("stop").to_owned();
        final_fields(&model, &mut o, &v["usage"], &v["timings"], &finish);
        o.insert("outpost".into(), v["outpost"].clone());
        Json(Value::Object(o)).into_response()
    } else {
        // SSE events → NDJSON lines.
        let mut sse = response.into_body().into_data_stream();
        let lines = async_stream::stream! {
            let (mut buf, mut model, mut finish, mut report) = (String::new(), String::new(), "stop".to_owned(), Value::Null);
            while let Some(Ok(bytes)) = sse.next().await {
                buf.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                        if data == "[DONE]" {
                            continue;
                        }
                        let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
                        if let Some(m) = v["model"].as_str() { model = m.to_owned(); }
                        if let Some(e) = v["error"]["message"].as_str() {
                            yield Ok::<_, std::convert::Infallible>(format!("{}\n", json!({"error": e})));
                            return;
                        }
                        if !v["outpost"].is_null() { report = v["outpost"].clone(); }
                        if let Some(f) = v["choices"][0]["finish_reason"].as_str() { finish = f.to_owned(); }
                        let text = if chat_path { v["choices"][0]["delta"]["content"].as_str() } else { v["choices"][0]["text"].as_str() };
                        if let Some(t) = text.filter(|t| !t.is_empty()) {
                            yield Ok(format!("{}\n", piece(kind, &model, t)));
                        }
                        if !v["usage"].is_null() {
                            let mut o = piece(kind, &model, "").as_object().cloned().unwrap_or_default();
                            final_fields(&model, &mut o, &v["usage"], &v["timings"], &finish);
                            let report = if v["outpost"].is_null() { report.clone() } else { v["outpost"].clone() };
                            o.insert("outpost".into(), report);
                            yield Ok(format!("{}\n", Value::Object(o)));
                            return;
                        }
                    }
                }
            }
        };
        let mut r = Response::new(Body::from_stream(lines));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        r
    };
    if let Some(route) = route {
        out.headers_mut().insert(super::report::ROUTE_HEADER, route);
    }
    out
}

/// `POST /api/chat`.
pub async fn chat(State(state): State<AppState>, body: Bytes) -> Response {
    let req = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return error(StatusCode::BAD_REQUEST, "messages is required");
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let mut out = Map::new();
    out.insert(
        "messages".into(),
        json!(messages
            .iter()
            .map(|m| json!({"role": m["role"], "content": m["content"]}))
            .collect::<Vec<_>>()),
    );
    if let Some(tools) = req.get("tools") {
        out.insert("tools".into(), tools.clone());
    }
    sampling_into(&req, &mut out);
    out.insert("stream".into(), json!(stream));
    if stream {
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    translate(openai(&state, "chat", Value::Object(out)).await, Kind::Chat, stream, true).await
}

/// `POST /api/generate`.
pub async fn generate(State(state): State<AppState>, body: Bytes) -> Response {
    let req = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let prompt = req.get("prompt").and_then(Value::as_str).unwrap_or_default().to_owned();
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(true);
    if prompt.is_empty() {
        // Ollama answers an empty prompt by loading the model: it is loaded.
        let mut o = Map::new();
        final_fields(
            &model_name(&state),
            &mut o,
            &json!({"prompt_tokens": 0, "completion_tokens": 0}),
            &Value::Null,
            "load",
        );
        o.insert("response".into(), json!(""));
        return Json(Value::Object(o)).into_response();
    }
    let raw = req.get("raw").and_then(Value::as_bool).unwrap_or(false);
    let mut out = Map::new();
    if raw {
        out.insert("prompt".into(), json!(prompt));
    } else {
        let mut messages = Vec::new();
        if let Some(system) = req.get("system").and_then(Value::as_str) {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        out.insert("messages".into(), json!(messages));
    }
    sampling_into(&req, &mut out);
    out.insert("stream".into(), json!(stream));
    if stream && !raw {
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let path = if raw { "completions" } else { "chat" };
    translate(openai(&state, path, Value::Object(out)).await, Kind::Generate, stream, !raw).await
}

fn model_name(state: &AppState) -> String {
    state.engine.model().map(|m| m.id.clone()).unwrap_or_default()
}

fn model_entry(state: &AppState) -> Option<Value> {
    let m = state.engine.model()?;
    let params = m.parameters as f64;
    let size = if params >= 1e9 { format!("{:.1}B", params / 1e9) } else { format!("{:.0}M", params / 1e6) };
    Some(json!({
        "name": m.id, "model": m.id, "modified_at": rfc3339_now(), "size": m.size,
        "digest": m.sha256.clone().unwrap_or_default(),
        "details": {"format": "gguf", "family": m.architecture, "families": [m.architecture],
                    "parameter_size": size, "quantization_level": m.quantization},
    }))
}

/// `GET /api/tags`.
pub async fn tags(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "models": model_entry(&state).into_iter().collect::<Vec<_>>() }))
}

/// `GET /api/ps`: the loaded model (it stays loaded).
pub async fn ps(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = model_entry(&state)
        .map(|mut e| {
            e["size_vram"] = json!(0);
            e["expires_at"] = json!("9999-12-31T23:59:59Z");
            e
        })
        .into_iter()
        .collect();
    Json(json!({ "models": models }))
}

/// `POST /api/show`.
pub async fn show(State(state): State<AppState>) -> Response {
    let Some(m) = state.engine.model() else { return error(StatusCode::NOT_FOUND, "no model is loaded") };
    let entry = model_entry(&state).unwrap_or_default();
    Json(json!({
        "modelfile": "", "parameters": "", "template": m.chat_template,
        "details": entry["details"],
        "model_info": {"general.architecture": m.architecture, "general.parameter_count": m.parameters,
                       "context_length": m.context, "context_length_train": m.context_train},
        "capabilities": ["completion"],
        "modified_at": entry["modified_at"],
    }))
    .into_response()
}

/// `GET /api/version`.
pub async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

/// `POST /api/embed`.
pub async fn embed(State(state): State<AppState>, body: Bytes) -> Response {
    let req = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let input = req.get("input").cloned().unwrap_or(Value::Null);
    let bytes = Bytes::from(json!({ "input": input }).to_string());
    let response = match super::embeddings::embeddings(State(state.clone()), bytes).await {
        Ok(r) => r.0,
        Err(e) => {
            let r = e.into_response();
            return match ollama_error(r).await {
                Ok(r) | Err(r) => r,
            };
        }
    };
    let embeddings: Vec<Value> = response["data"]
        .as_array()
        .map(|d| d.iter().map(|e| e["embedding"].clone()).collect())
        .unwrap_or_default();
    Json(json!({
        "model": response["model"], "embeddings": embeddings,
        "prompt_eval_count": response["usage"]["prompt_tokens"],
    }))
    .into_response()
}
