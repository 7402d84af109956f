//! What goes over the wire: the upstream URL and request, and reading what comes back.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::CloudError;

/// The largest non-streamed answer accepted.
pub(super) const MAX_BODY: usize = 8 << 20;
/// How much of an error answer is read for its message.
pub(super) const MAX_ERROR_BODY: usize = 64 << 10;
/// How much of the cloud's error message is kept.
const MAX_MESSAGE_CHARS: usize = 500;

/// Checks a `cloud.url`: an absolute http(s) URL with a host.
pub(super) fn parse_base_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("is not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("must be an http:// or https:// URL (got {}://)", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".to_owned());
    }
    Ok(parsed)
}

/// The upstream request: the client's body without Outpost's fields, for our model.
pub(super) fn prepare(request: Value, model: &str, stream: bool) -> Result<Value, CloudError> {
    let Value::Object(mut body) = request else {
        return Err(CloudError::Client("the request body is not a JSON object".to_owned()));
    };
    body.remove("outpost");
    body.remove("stream_options");
    body.insert("model".to_owned(), Value::from(model));
    body.insert("stream".to_owned(), Value::from(stream));
    Ok(Value::Object(body))
}

/// A non-streamed answer: a JSON object with `choices`.
pub(super) fn parse_completion(bytes: &[u8]) -> Result<Value, String> {
    let answer: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if !answer.get("choices").is_some_and(Value::is_array) {
        return Err("no `choices` array in the answer".to_owned());
    }
    Ok(answer)
}

pub(super) fn join(base: &Url, segments: &[&str]) -> Result<Url, CloudError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| CloudError::Client("cloud.url cannot be a base URL".to_owned()))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured: the normal backoff applies).
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

pub(super) enum BodyError {
    TooLarge,
    Read(reqwest::Error),
}

/// Reads a body up to `cap` bytes. An error answer is cut at `cap` instead of failing.
pub(super) async fn read_body(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    let truncate = !response.status().is_success();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > cap {
            if truncate {
                body.extend_from_slice(&chunk[..cap - body.len()]);
                break;
            }
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its sources, each once, in one line.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The message of an error answer: `error.message` of a JSON body, else the body's text, cut to
/// a readable length.
pub(super) fn status_message(status: StatusCode, body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let error = v.get("error").unwrap_or(&v);
        let message = error.get("message").unwrap_or(error);
        message.as_str().map(str::to_owned)
    });
    let mut message = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("no message").to_owned();
    }
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    message
}
