//! A minimal client of the local API over its Unix socket (used by `outpost ask`).

use std::io::Write;
use std::path::Path;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixStream;

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source} (is `outpost serve` running?)")]
    Connect {
        /// The socket path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// HTTP failed on the connection.
    #[error("HTTP error talking to the daemon: {0}")]
    Http(String),
    /// The daemon answered with an error.
    #[error("the daemon answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error's message.
        message: String,
    },
    /// Writing the answer failed.
    #[error("cannot write the answer: {0}")]
    Output(#[from] std::io::Error),
}

/// What to ask.
#[derive(Debug)]
pub struct Ask<'a> {
    /// The user's message.
    pub prompt: &'a str,
    /// An optional system message.
    pub system: Option<&'a str>,
    /// Tokens to generate at most.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
}

/// Streams the answer to `out` as it is generated; returns the finish reason.
pub async fn ask(socket: &Path, ask: &Ask<'_>, out: &mut impl Write) -> Result<String, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(connection);

    let mut messages = Vec::new();
    if let Some(system) = ask.system {
        messages.push(json!({ "role": "system", "content": system }));
    }
    messages.push(json!({ "role": "user", "content": ask.prompt }));
    let mut body = json!({ "messages": messages, "stream": true });
    if let Some(n) = ask.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(t) = ask.temperature {
        body["temperature"] = json!(t);
    }
    let request = Request::post("/v1/chat/completions")
        .header(HOST, "localhost")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| ClientError::Http(e.to_string()))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body.collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
        return Err(api_error(status.as_u16(), &bytes));
    }
    let mut pending = Vec::new();
    let mut finish = String::from("unknown");
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(payload) = line.trim_end().strip_prefix("data: ") else { continue };
            if payload == "[DONE]" {
                out.flush()?;
                return Ok(finish);
            }
            let Ok(chunk) = serde_json::from_str::<Value>(payload) else { continue };
            if chunk.get("error").is_some() {
                return Err(api_error(status.as_u16(), payload.as_bytes()));
            }
            let choice = &chunk["choices"][0];
            if let Some(text) = choice["delta"]["content"].as_str() {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = reason.to_owned();
            }
        }
    }
    Err(ClientError::Http("the stream ended before [DONE]".into()))
}

fn api_error(status: u16, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    ClientError::Api { status, message }
}
