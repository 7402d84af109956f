//! Every API error, mapped to an HTTP status and OpenAI's error shape in one place.
//!
//! Callers see a clear message and a stable `code`; internal detail goes to the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::{GenerateError, LoadError, SubmitError};

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

/// An error returned to an API caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The JSON does not describe a valid request.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
        /// The offending parameter.
        param: Option<&'static str>,
    },
    /// The prompt does not fit in the context window.
    #[error(transparent)]
    ContextOverflow(GenerateError),
    /// The prompt does not fit in the local context and the cloud may not take it.
    #[error("{0}")]
    ContextTooLong(String),
    /// The policy refused the request (e.g. it forced the cloud, which is not allowed or not
    /// reachable).
    #[error("the request cannot be served: {0}")]
    Refused(String),
    /// The device is offline, nothing is cached for the request, and it cannot be answered
    /// locally.
    #[error("the device is offline and nothing is cached for this request ({0})")]
    OfflineNoCache(String),
    /// The cloud failed.
    #[error("the cloud model failed: {0}")]
    Cloud(crate::cloud::CloudError),
    /// The engine queue is full.
    #[error("the server is busy: {0}; retry shortly")]
    QueueFull(SubmitError),
    /// No model is loaded yet.
    #[error("the model is still loading; retry shortly")]
    NotReady,
    /// The daemon is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The caller may not use this endpoint.
    #[error("only root and the uids in api.admin_uids may use {0}")]
    Forbidden(&'static str),
    /// No such endpoint.
    #[error("no endpoint {0}")]
    NotFound(String),
    /// Loading a model failed; the previous model is still served.
    #[error("reload failed, still serving the previous model: {0}")]
    ReloadFailed(LoadError),
    /// Inference failed inside llama.cpp (detail is logged, not returned).
    #[error("inference failed; see the daemon's log")]
    Inference,
}

impl ApiError {
    /// (HTTP status, OpenAI error type, stable code)
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json"),
            Self::InvalidRequest { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value")
            }
            Self::ContextOverflow(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", "context_length_exceeded")
            }
            Self::ContextTooLong(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", "context_length_exceeded")
            }
            Self::OfflineNoCache(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "offline_no_cache"),
            Self::Refused(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "route_unavailable"),
            Self::Cloud(err) if err.is_unreachable() => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error", "cloud_unavailable")
            }
            Self::Cloud(_) => (StatusCode::BAD_GATEWAY, "server_error", "cloud_error"),
            Self::QueueFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "queue_full"),
            Self::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "model_not_loaded"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "shutting_down"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_error", "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
            Self::ReloadFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "model_load_failed"),
            Self::Inference => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "inference_failed"),
        }
    }

    /// The stable code, also the `kind` label of the errors metric.
    pub fn code(&self) -> &'static str {
        self.parts().2
    }

    /// The JSON body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        let (_, kind, code) = self.parts();
        let param = match self {
            Self::InvalidRequest { param, .. } => *param,
            Self::ContextOverflow(_) | Self::ContextTooLong(_) => Some("messages"),
            _ => None,
        };
        json!({ "error": { "message": self.to_string(), "type": kind, "param": param, "code": code } })
    }
}

impl From<SubmitError> for ApiError {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::QueueFull(_) => Self::QueueFull(err),
            SubmitError::NotReady => Self::NotReady,
            SubmitError::Stopped => Self::ShuttingDown,
        }
    }
}

impl From<GenerateError> for ApiError {
    fn from(err: GenerateError) -> Self {
        match err {
            GenerateError::ContextOverflow { .. } => Self::ContextOverflow(err),
            GenerateError::Template(message) => Self::InvalidRequest { message, param: Some("messages") },
            GenerateError::Invalid { param, message } => Self::InvalidRequest { message, param: Some(param) },
            GenerateError::NotLoaded => Self::NotReady,
            GenerateError::Inference(detail) => {
                tracing::error!(%detail, "inference failed");
                Self::Inference
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        let mut response = (status, axum::Json(self.body())).into_response();
        // The request metrics middleware counts errors by this code.
        response.extensions_mut().insert(ErrorCode(self.code()));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        response
    }
}

/// Marks a response as an error of this code (read by the metrics middleware).
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);
