//! OpenAI chat-completions wire types and their validation into engine requests.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::ApiError;
use crate::config::GenerationConfig;
use crate::engine::{
    ChatMessage, Completion, FinishReason, Generate, ModelInfo, Sampling, TokenLogprob, ToolChat,
};

/// Most alternatives a caller may ask for per token (OpenAI's limit).
const MAX_TOP_LOGPROBS: u8 = 20;
/// Most stop sequences per request.
const MAX_STOPS: usize = 16;

/// `POST /v1/chat/completions` body. Unknown fields are ignored, as OpenAI-compatible servers do.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// Echoed back; this server serves one model whatever is named.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<RequestMessage>,
    /// Sampling temperature, 0–2 (0 = greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus mass, (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Top-k cut (an extension; 0 = off).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Seed for reproducible sampling.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Tokens to generate at most.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// One stop string or several.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Return token log-probabilities.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per token, with `logprobs`.
    #[serde(default)]
    pub top_logprobs: Option<u8>,
    /// Choices to generate; only 1 is supported.
    #[serde(default)]
    pub n: Option<u32>,
    /// Outpost's routing options: `{"allow_cloud": false}`, `{"route": "local"|"cloud"|"auto"}`.
    #[serde(default)]
    pub outpost: Option<crate::policy::RequestOptions>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema":
    /// {"name", "schema", "strict"}}`: honoured locally by grammar-constrained sampling.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// A GBNF grammar the answer must follow (llama-server's extension).
    #[serde(default)]
    pub grammar: Option<String>,
    /// -2 to 2: penalise tokens that appeared at all.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// -2 to 2: penalise tokens by how often they appeared.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// llama.cpp's repeat penalty (1 = off; an extension).
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    /// Min-p sampling (0 = off; an extension).
    #[serde(default)]
    pub min_p: Option<f32>,
    /// Token id (as a string) → bias, -100 to 100.
    #[serde(default)]
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// Tool definitions (see `api/tools.rs`).
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{"type": "function", "function": {"name"}}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Several calls in one answer (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
}

/// The grammar for `{"type": "json_object"}`: any JSON object (llama.cpp's converter on the
/// schema `{"type": "object"}`).
pub fn json_object_grammar() -> Result<String, ApiError> {
    schema_grammar(&json!({"type": "object"}))
}

/// A JSON schema as a GBNF grammar, by llama.cpp's own converter.
pub fn schema_grammar(schema: &Value) -> Result<String, ApiError> {
    if !schema.is_object() {
        return Err(invalid("response_format", "json_schema.schema must be a JSON schema object"));
    }
    llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
        invalid(
            "response_format",
            format!(
                "the local engine cannot constrain output to this JSON schema (llama.cpp's converter: {e})"
            ),
        )
    })
}

/// The grammar a `response_format` asks for (`None` for text).
pub fn response_format_grammar(format: &Value) -> Result<Option<String>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => json_object_grammar().map(Some),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .ok_or_else(|| invalid("response_format", "json_schema needs a `schema`"))?;
            schema_grammar(schema).map(Some)
        }
        Some(other) => {
            Err(invalid("response_format", format!("response_format type `{other}` is not supported")))
        }
        None => Err(invalid("response_format", "response_format needs a `type`")),
    }
}

/// One message of the request.
#[derive(Debug, Deserialize)]
pub struct RequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or a list of content parts of which the text parts are used.
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant message's tool calls.
    #[serde(default)]
    pub tool_calls: Option<Value>,
    /// A tool message's call id.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// The function a tool message answers (OpenAI leaves it out; it is found by call id).
    #[serde(default)]
    pub name: Option<String>,
}

/// Message content: a string or content parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// `text` (other types are rejected).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// `stop`: a string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest { message: message.into(), param: Some(param) }
}

impl ChatRequest {
    /// Parses a body, telling malformed JSON (400 `invalid_json`) from a bad request.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(body).map_err(|err| match err.classify() {
            serde_json::error::Category::Data => invalid("body", format!("invalid request: {err}")),
            _ => ApiError::InvalidJson(err.to_string()),
        })
    }

    /// Whether to stream.
    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the stream ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }

    /// Validates the request and applies the configured defaults.
    pub fn into_generate(self, defaults: &GenerationConfig) -> Result<Generate, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("n", "only n = 1 is supported"));
        }
        if self.messages.is_empty() {
            return Err(invalid("messages", "messages must contain at least one message"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        // The same conversation as a Jinja chat template with tools takes it.
        let mut structured = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                other => {
                    return Err(invalid(
                        "messages",
                        format!("messages[{i}].role `{other}` is not a known role"),
                    ))
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(invalid(
                                    "messages",
                                    format!(
                                    "messages[{i}]: content part type `{kind}` is not supported (text only)"
                                ),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            if content.contains('\0') {
                return Err(invalid("messages", format!("messages[{i}].content contains a NUL character")));
            }
            structured.push(super::tools::structured_message(
                role,
                &content,
                m.tool_calls.as_ref(),
                m.tool_call_id.as_deref(),
                m.name.as_deref(),
                &structured,
            ));
            // Tool calls and results as text every chat template can render.
            let (role, content) = match role {
                "assistant" if m.tool_calls.is_some() => {
                    let calls = super::tools::calls_as_text(m.tool_calls.as_ref().unwrap_or(&Value::Null));
                    ("assistant", format!("{content}{calls}"))
                }
                "tool" => ("user", super::tools::result_as_text(&content, m.tool_call_id.as_deref())),
                other => (other, content),
            };
            messages.push(ChatMessage { role: role.to_owned(), content });
        }

        let mut sampling = Sampling::defaults(defaults);
        apply_sampling_basics(
            &mut sampling,
            Basics {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                seed: self.seed,
                max_tokens: self.max_completion_tokens.or(self.max_tokens),
            },
        )?;
        sampling.stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if sampling.stop.len() > MAX_STOPS {
            return Err(invalid("stop", format!("at most {MAX_STOPS} stop sequences")));
        }
        if self.logprobs.unwrap_or(false) {
            let n = self.top_logprobs.unwrap_or(0);
            if n > MAX_TOP_LOGPROBS {
                return Err(invalid(
                    "top_logprobs",
                    format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}"),
                ));
            }
            sampling.logprobs = Some(n);
        } else if self.top_logprobs.is_some_and(|n| n > 0) {
            return Err(invalid("top_logprobs", "top_logprobs requires logprobs: true"));
        }
        let tools = match &self.tools {
            Some(list) if !list.is_empty() => {
                super::tools::prepare(list, self.tool_choice.as_ref(), self.parallel_tool_calls)?
            }
            _ => None,
        };
        if let Some(tools) = &tools {
            match messages.iter_mut().find(|m| m.role == "system") {
                Some(system) => system.content = format!("{}\n\n{}", system.content, tools.prompt),
                None => {
                    messages.insert(0, ChatMessage { role: "system".into(), content: tools.prompt.clone() })
                }
            }
            if tools.grammar.is_some() && (self.response_format.is_some() || self.grammar.is_some()) {
                return Err(invalid(
                    "tool_choice",
                    "a required tool call cannot also follow response_format or grammar",
                ));
            }
        }
        apply_sampling_extras(
            &mut sampling,
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
        let tool_chat = match (&tools, self.tools) {
            (Some(_), Some(definitions)) => {
                Some(std::sync::Arc::new(ToolChat { messages: structured, tools: definitions }))
            }
            _ => None,
        };
        if let Some(grammar) = tools.and_then(|t| t.grammar) {
            sampling.grammar = Some(grammar);
        }
        Ok(Generate { messages, raw_prompt: None, sampling, threads: None, tools: tool_chat })
    }

    /// `Some(parallel_tool_calls)` when the answer may be a tool call (tools given,
    /// `tool_choice` not `none`).
    pub fn tools_active(&self) -> Option<bool> {
        let active = self.tools.as_ref().is_some_and(|t| !t.is_empty())
            && self.tool_choice.as_ref().and_then(Value::as_str) != Some("none");
        active.then(|| self.parallel_tool_calls.unwrap_or(true))
    }
}

/// OpenAI's basic sampling options, shared by chat and text completions.
pub struct Basics {
    /// `temperature`, 0 to 2.
    pub temperature: Option<f32>,
    /// `top_p`, in (0, 1].
    pub top_p: Option<f32>,
    /// `top_k` (llama.cpp's; 0 = off).
    pub top_k: Option<u32>,
    /// `seed`.
    pub seed: Option<i64>,
    /// `max_tokens` (or chat's `max_completion_tokens`), at least 1.
    pub max_tokens: Option<u32>,
}

/// Validates the basic options into `sampling`.
pub fn apply_sampling_basics(sampling: &mut Sampling, b: Basics) -> Result<(), ApiError> {
    if let Some(t) = b.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(invalid("temperature", "temperature must be between 0 and 2"));
        }
        sampling.temperature = t;
    }
    if let Some(p) = b.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(invalid("top_p", "top_p must be in (0, 1]"));
        }
        sampling.top_p = p;
    }
    if let Some(k) = b.top_k {
        sampling.top_k = k;
    }
    if let Some(seed) = b.seed {
        // llama.cpp takes a 32-bit seed; larger seeds are folded, keeping them deterministic.
        sampling.seed = Some((seed as u64 ^ ((seed as u64) >> 32)) as u32);
    }
    if let Some(max) = b.max_tokens {
        if max == 0 {
            return Err(invalid("max_tokens", "max_tokens must be at least 1"));
        }
        sampling.max_tokens = max;
    }
    Ok(())
}

/// Sampling options beyond OpenAI's basic ones, shared by chat and text completions.
pub struct Extras<'a> {
    /// `response_format`.
    pub response_format: Option<&'a Value>,
    /// `grammar` (GBNF).
    pub grammar: Option<String>,
    /// `presence_penalty`.
    pub presence_penalty: Option<f32>,
    /// `frequency_penalty`.
    pub frequency_penalty: Option<f32>,
    /// `repeat_penalty`.
    pub repeat_penalty: Option<f32>,
    /// `min_p`.
    pub min_p: Option<f32>,
    /// `logit_bias`.
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
}

/// Validates the extras into `sampling`.
pub fn apply_sampling_extras(sampling: &mut Sampling, e: Extras<'_>) -> Result<(), ApiError> {
    let from_format = match e.response_format {
        Some(format) => response_format_grammar(format)?,
        None => None,
    };
    sampling.grammar = match (from_format, e.grammar) {
        (Some(_), Some(_)) => return Err(invalid("grammar", "give response_format or grammar, not both")),
        (Some(g), None) => Some(g),
        (None, Some(g)) if g.trim().is_empty() => return Err(invalid("grammar", "grammar is empty")),
        (None, g) => g,
    };
    for (param, value, slot) in [
        ("presence_penalty", e.presence_penalty, &mut sampling.presence_penalty),
        ("frequency_penalty", e.frequency_penalty, &mut sampling.frequency_penalty),
    ] {
        if let Some(v) = value {
            if !(-2.0..=2.0).contains(&v) {
                return Err(invalid(param, format!("{param} must be between -2 and 2")));
            }
            *slot = v;
        }
    }
    if let Some(v) = e.repeat_penalty {
        if !(0.0..=10.0).contains(&v) || v == 0.0 {
            return Err(invalid("repeat_penalty", "repeat_penalty must be in (0, 10] (1 = off)"));
        }
        sampling.repeat_penalty = v;
    }
    if let Some(v) = e.min_p {
        if !(0.0..=1.0).contains(&v) {
            return Err(invalid("min_p", "min_p must be between 0 and 1"));
        }
        sampling.min_p = v;
    }
    if let Some(biases) = e.logit_bias {
        if biases.len() > 300 {
            return Err(invalid("logit_bias", "at most 300 biased tokens"));
        }
        for (token, bias) in biases {
            let id: i32 = token
                .parse()
                .map_err(|_| invalid("logit_bias", format!("logit_bias key `{token}` is not a token id")))?;
            if !(-100.0..=100.0).contains(&bias) {
                return Err(invalid("logit_bias", "logit_bias values must be between -100 and 100"));
            }
            sampling.logit_bias.push((id, bias));
        }
    }
    Ok(())
}

/// Identifies one completion in its response or chunks, and builds their shapes.
pub struct Meta {
    id: String,
    created: u64,
    /// The model named in the response.
    pub model: String,
}

impl Meta {
    /// A new completion id for an answer by `model`.
    pub fn new(model: String) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self { id: format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32), created, model }
    }

    /// The completion's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Unix seconds it was created.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// A `chat.completion` with one choice (callers add `usage` and the rest).
    pub fn completion(&self, content: &str, logprobs: Value, finish: &str) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content },
                "logprobs": logprobs,
                "finish_reason": finish,
            }],
        })
    }

    /// A `chat.completion.chunk` with one choice.
    pub fn chunk(&self, delta: Value, finish: Option<&str>, logprobs: Option<Value>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
        })
    }
}

/// The OpenAI `finish_reason` string.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
    }
}

/// `usage`, with the cached prompt tokens OpenAI reports under `prompt_tokens_details`.
pub fn usage(done: &Completion) -> Value {
    json!({
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": done.cached_tokens },
    })
}

/// llama-server's `timings` object, so existing benchmark tooling reads our speeds.
pub fn timings(done: &Completion) -> Value {
    let evaluated = done.prompt_tokens.saturating_sub(done.cached_tokens);
    let prompt_ms = done.prompt_time.as_secs_f64() * 1000.0;
    let decoded = done.completion_tokens.saturating_sub(1);
    let predicted_ms = done.decode_time.as_secs_f64() * 1000.0;
    let per_second = |n: u32, ms: f64| if ms > 0.0 { f64::from(n) * 1000.0 / ms } else { 0.0 };
    json!({
        "prompt_n": evaluated,
        "prompt_ms": prompt_ms,
        "prompt_per_second": per_second(evaluated, prompt_ms),
        "predicted_n": decoded,
        "predicted_ms": predicted_ms,
        "predicted_per_second": per_second(decoded, predicted_ms),
    })
}

/// `logprobs` of a choice.
pub fn logprobs(content: &[TokenLogprob]) -> Value {
    json!({ "content": content })
}

/// `GET /v1/models` entry.
#[derive(Debug, Serialize)]
pub struct ModelEntry<'a> {
    /// The model id.
    pub id: &'a str,
    /// Always `model`.
    pub object: &'static str,
    /// Load time (Unix seconds).
    pub created: u64,
    /// Always `outpost`.
    pub owned_by: &'static str,
    /// File, size, quantization, context, version, sha256...
    #[serde(flatten)]
    pub info: &'a ModelInfo,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Generate, ApiError> {
        ChatRequest::parse(body.as_bytes())?.into_generate(&GenerationConfig::default())
    }

    #[test]
    fn defaults_apply_and_request_values_win() {
        let g = parse(r#"{"messages":[{"role":"user","content":"hi"}]}"#).expect("valid");
        assert_eq!(g.sampling.max_tokens, GenerationConfig::default().max_tokens);
        assert!(g.sampling.logprobs.is_none());
        let g = parse(
            r#"{"model":"x","messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "temperature":0,"max_completion_tokens":5,"stop":"END","logprobs":true,"top_logprobs":2,"seed":3,
                "some_future_field":{"x":1}}"#,
        )
        .expect("valid");
        assert_eq!(g.messages[0].role, "system");
        assert_eq!(g.messages[0].content, "ab");
        assert_eq!(g.sampling.temperature, 0.0);
        assert_eq!(g.sampling.max_tokens, 5);
        assert_eq!(g.sampling.stop, vec!["END".to_owned()]);
        assert_eq!(g.sampling.logprobs, Some(2));
        assert_eq!(g.sampling.seed, Some(3));
    }

    #[test]
    fn malformed_json_and_bad_values_are_told_apart() {
        assert!(matches!(parse("{"), Err(ApiError::InvalidJson(_))));
        assert!(matches!(parse(r#"{"messages": ["#), Err(ApiError::InvalidJson(_))));
        let param = |body: &str| match parse(body) {
            Err(ApiError::InvalidRequest { param, .. }) => param,
            other => panic!("expected a bad request, got {other:?}"),
        };
        assert_eq!(param(r#"{"messages":"hi"}"#), Some("body"));
        assert_eq!(param(r#"{"messages":[]}"#), Some("messages"));
        assert_eq!(param(r#"{"messages":[{"role":"wizard","content":"x"}]}"#), Some("messages"));
        assert_eq!(param(r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#), Some("n"));
        assert_eq!(param(r#"{"messages":[{"role":"user","content":"x"}],"top_p":0}"#), Some("top_p"));
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#),
            Some("max_tokens")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":3}"#),
            Some("top_logprobs")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#),
            Some("messages")
        );
    }
}
