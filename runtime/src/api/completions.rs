//! `POST /v1/completions`: a raw prompt completed by the local model, as base models and
//! llama-server's clients use it (no chat template). Streamed or not, with the sampling options
//! of chat completions (including `response_format`/`grammar`). Always answered locally (the
//! `outpost` report says so): a cloud chat model is not a completion endpoint for base models.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::openai::{
    apply_sampling_basics, apply_sampling_extras, finish_reason, timings, usage, Basics, Extras, Meta, Stop,
};
use super::report::ROUTE_HEADER;
use super::AppState;
use crate::engine::{Event, Generate, Sampling};

/// The body (unknown fields are ignored, as for chat).
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The text to continue (one string; an array of one string is accepted too).
    pub prompt: PromptField,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    grammar: Option<String>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    repeat_penalty: Option<f32>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    n: Option<u32>,
}

/// `prompt`: a string, or a list holding one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// One prompt.
    One(String),
    /// A batch (only one prompt is supported).
    Many(Vec<String>),
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest { message: message.into(), param: Some(param) }
}

impl CompletionRequest {
    fn into_generate(self, state: &AppState) -> Result<(Generate, bool), ApiError> {
        let prompt = match self.prompt {
            PromptField::One(p) => p,
            PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
            PromptField::Many(_) => {
                return Err(invalid("prompt", "only one prompt per request is supported"))
            }
        };
        if prompt.is_empty() || prompt.contains('\0') {
            return Err(invalid("prompt", "prompt must be non-empty text without NUL characters"));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("n", "only n = 1 is supported"));
        }
        if self.echo.unwrap_or(false) {
            return Err(invalid("echo", "echo is not supported"));
        }
        let mut s = Sampling::defaults(&state.config.generation);
        apply_sampling_basics(
            &mut s,
            Basics {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                seed: self.seed,
                max_tokens: self.max_tokens,
            },
        )?;
        s.stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(x)) => vec![x],
            Some(Stop::Many(v)) => v,
        };
        apply_sampling_extras(
            &mut s,
            Extras {
                response_format: self.response_format.as_ref(),
                grammar: self.grammar,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                repeat_penalty: self.repeat_penalty,
                min_p: self.min_p,
                logit_bias: self.logit_bias,
            },
        )?;
        let generate = Generate {
            messages: Vec::new(),
            raw_prompt: Some(prompt),
            sampling: s,
            threads: None,
            tools: None,
        };
        Ok((generate, self.stream.unwrap_or(false)))
    }
}

fn report() -> Value {
    json!({"route": "local", "reasons": ["text completions are answered by the local model"],
           "complexity": null, "confidence": null, "cascaded": false})
}

/// The handler.
pub async fn completions(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let request: CompletionRequest = serde_json::from_slice(&body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => invalid("body", format!("invalid request: {err}")),
        _ => ApiError::InvalidJson(err.to_string()),
    })?;
    let (generate, stream) = request.into_generate(&state)?;
    let mut events = state.engine.submit(generate)?;
    let model = match events.recv().await {
        Some(Event::Started { model, .. }) => model,
        Some(Event::Failed(err)) => return Err(err.into()),
        _ => return Err(ApiError::ShuttingDown),
    };
    let meta = Meta::new(model.id.clone());
    let mut response = if stream {
        let chunk = move |text: &str, finish: Option<&str>| {
            json!({"id": meta.id(), "object": "text_completion", "created": meta.created(), "model": meta.model,
                   "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]})
        };
        let stream = async_stream::stream! {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Token { text, .. } if !text.is_empty() => {
                        yield Ok::<_, std::convert::Infallible>(SseEvent::default().data(chunk(&text, None).to_string()));
                    }
                    Event::Done(done) => {
                        let mut last = chunk("", Some(finish_reason(done.finish_reason)));
                        last["usage"] = usage(&done);
                        last["outpost"] = report();
                        yield Ok(SseEvent::default().data(last.to_string()));
                        yield Ok(SseEvent::default().data("[DONE]"));
                        break;
                    }
                    Event::Failed(err) => {
                        yield Ok(SseEvent::default().data(json!({"error": {"message": err.to_string()}}).to_string()));
                        break;
                    }
                    _ => {}
                }
            }
        };
        Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
    } else {
        let answer = super::local::collect(events).await?;
        Json(json!({
            "id": meta.id(), "object": "text_completion", "created": meta.created(), "model": meta.model,
            "choices": [{"index": 0, "text": answer.content, "logprobs": null,
                         "finish_reason": finish_reason(answer.done.finish_reason)}],
            "usage": usage(&answer.done),
            "timings": timings(&answer.done),
            "outpost": report(),
        }))
        .into_response()
    };
    response.headers_mut().insert(ROUTE_HEADER, axum::http::HeaderValue::from_static("local"));
    Ok(response)
}
