//! The credentials files: the API key (read at start, and again after a 401) and the extra CA
//! certificates. The key goes into the `Authorization` header only; it is blanked out of every
//! message that could quote it.
//!
//! Under systemd the key is a credential: `LoadCredential=cloud-api-key:...` puts it in
//! `$CREDENTIALS_DIRECTORY/cloud-api-key`, readable by the service alone, and that file is used
//! when `cloud.api_key_file` is unset.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
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

/// The name of the systemd credential holding the API key.
pub const CREDENTIAL_NAME: &str = "cloud-api-key";

/// The key file to use: `cloud.api_key_file` when set, else the systemd credential
/// `$CREDENTIALS_DIRECTORY/cloud-api-key` when that file exists (`credentials_dir` is the
/// variable's value), else none.
pub(super) fn key_file(configured: Option<&Path>, credentials_dir: Option<&OsStr>) -> Option<PathBuf> {
    if let Some(path) = configured {
        return Some(path.to_path_buf());
    }
    let dir = Path::new(credentials_dir.filter(|d| !d.is_empty())?);
    let path = dir.join(CREDENTIAL_NAME);
    path.is_file().then_some(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_is_used_only_when_no_key_file_is_configured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().as_os_str();
        let configured = Path::new("/etc/outpost/cloud.key");

        // No credential yet: nothing, or the configured file.
        assert_eq!(key_file(None, Some(creds)), None);
        assert_eq!(key_file(None, None), None);
        assert_eq!(key_file(Some(configured), Some(creds)), Some(configured.to_path_buf()));

        let credential = dir.path().join(CREDENTIAL_NAME);
        std::fs::write(&credential, "sk-from-systemd\n").expect("write the credential");
        assert_eq!(key_file(None, Some(creds)), Some(credential.clone()));
        assert_eq!(key_file(Some(configured), Some(creds)), Some(configured.to_path_buf()), "config wins");
        assert_eq!(key_file(None, None), None, "no $CREDENTIALS_DIRECTORY");
        assert_eq!(key_file(None, Some(OsStr::new(""))), None, "empty $CREDENTIALS_DIRECTORY");
        let key = read_key(&credential).expect("the credential holds a key");
        assert_eq!(key.secret, "sk-from-systemd");
    }

    #[test]
    fn a_directory_named_like_the_credential_is_not_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(CREDENTIAL_NAME)).expect("mkdir");
        assert_eq!(key_file(None, Some(dir.path().as_os_str())), None);
    }
}
