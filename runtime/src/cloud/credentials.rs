//! The credentials files: the API key (read at start, and again after a 401) and the extra CA
//! certificates. The key goes into the `Authorization` header only; it is blanked out of every
//! message that could quote it.

use std::path::Path;
use std::sync::PoisonError;

use reqwest::header::HeaderValue;

use super::client::Endpoint;
use super::wire::error_chain;
use super::CloudError;

/// The bearer key, as a header value that `Debug` does not print, plus the secret itself to
/// blank it out of error messages.
#[derive(Clone)]
pub(super) struct ApiKey {
    pub(super) header: HeaderValue,
    secret: String,
}

impl ApiKey {
    pub(super) fn parse(text: &str) -> Result<Self, std::io::Error> {
        let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
        let secret = text.trim();
        if secret.is_empty() {
            return Err(invalid("the file holds no key"));
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|_| invalid("the key holds characters not allowed in an HTTP header"))?;
        header.set_sensitive(true);
        Ok(Self { header, secret: secret.to_owned() })
    }
}

impl Endpoint {
    /// The current key, if any.
    pub(super) fn key(&self) -> Option<ApiKey> {
        self.key.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The `Authorization` header value, if a key is configured.
    pub(super) fn authorization(&self) -> Option<HeaderValue> {
        self.key().map(|k| k.header)
    }

    /// Blanks the key out of a message that may quote what the cloud or a library said.
    pub(super) fn redact(&self, message: String) -> String {
        match self.key() {
            Some(key) if message.contains(&key.secret) => message.replace(&key.secret, "[redacted]"),
            _ => message,
        }
    }

    /// Reads the key file again after a 401; the new key if it changed.
    pub(super) async fn reread_key(&self, current: Option<&ApiKey>) -> Option<ApiKey> {
        let path = self.config.api_key_file.as_ref()?;
        let text = match tokio::fs::read_to_string(path).await {
            Ok(text) => text,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "cannot re-read the cloud API key file");
                return None;
            }
        };
        let new = match ApiKey::parse(&text) {
            Ok(key) => key,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "the cloud API key file holds no usable key");
                return None;
            }
        };
        if current.is_some_and(|c| c.secret == new.secret) {
            return None;
        }
        tracing::info!(path = %path.display(), "the cloud answered 401; using the re-read API key");
        *self.key.lock().unwrap_or_else(PoisonError::into_inner) = Some(new.clone());
        Some(new)
    }
}

/// Reads the key file given at start; its path names every error.
pub(super) fn read_key(path: &Path) -> Result<ApiKey, CloudError> {
    let key_error = |source| CloudError::KeyFile { path: path.to_path_buf(), source };
    let text = std::fs::read_to_string(path).map_err(key_error)?;
    ApiKey::parse(&text).map_err(key_error)
}

/// Reads the extra root certificates; its path names every error.
pub(super) fn read_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, CloudError> {
    let ca_error = |reason: String| CloudError::CaFile { path: path.to_path_buf(), reason };
    let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(error_chain(&e)))?;
    if certs.is_empty() {
        return Err(ca_error("the file holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}
