//! The trial after a switch: ask the runtime to reload `current`, then check that it reports the
//! new version and answers a one-token generation, all within a deadline.
//!
//! The runtime speaks HTTP/1.1 on a Unix socket. The updater needs three small requests, so it
//! carries a minimal blocking client (one request per connection, `Connection: close`) instead of
//! an async HTTP stack: the crate stays small and fast to build, and every read and write is
//! bounded by the trial's deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A response body larger than this is refused (the runtime's answers are a few KiB).
const MAX_BODY: usize = 1024 * 1024;
/// Pause between retries of a request the runtime answered with 503 (busy or still loading).
const BUSY_RETRY: Duration = Duration::from_millis(200);

/// Why a trial did not pass.
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    /// Nothing listens on the socket (missing, or connection refused): the runtime is not running.
    #[error("the runtime is not running: cannot connect to {socket}: {source}")]
    RuntimeAbsent {
        /// The socket.
        socket: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// The deadline passed before the trial finished.
    #[error("no answer to {what} within the trial deadline ({timeout:?})")]
    Timeout {
        /// The step that was waiting.
        what: &'static str,
        /// The configured trial timeout.
        timeout: Duration,
    },
    /// The connection failed after it was established, or the answer was not HTTP.
    #[error("{what}: {reason}")]
    Protocol {
        /// The step.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The runtime could not load the new model and kept the old one.
    #[error("the runtime could not load the model: HTTP {status}: {message}")]
    LoadFailed {
        /// The HTTP status.
        status: u16,
        /// The runtime's error message (or body).
        message: String,
    },
    /// The runtime serves another version than the one switched to.
    #[error("the runtime reports version {found:?}, expected {expected}")]
    WrongVersion {
        /// The version expected.
        expected: String,
        /// What `/v1/models` reported.
        found: Option<String>,
    },
    /// The short generation failed.
    #[error("the test generation failed: HTTP {status}: {message}")]
    GenerationFailed {
        /// The HTTP status.
        status: u16,
        /// The runtime's error message (or body).
        message: String,
    },
}

impl TrialError {
    /// Whether the runtime simply was not there (as opposed to failing on the new model).
    pub fn is_runtime_absent(&self) -> bool {
        matches!(self, Self::RuntimeAbsent { .. })
    }

    /// Whether the failure says something about the version tried (so it is not tried again):
    /// not when the runtime is absent or refuses the updater's credentials (a setup problem).
    pub fn blames_version(&self) -> bool {
        !matches!(self, Self::RuntimeAbsent { .. } | Self::LoadFailed { status: 401 | 403, .. })
    }
}

/// A response: status and body.
#[derive(Debug)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The OpenAI-shaped error message, else the body as text (truncated).
    fn message(&self) -> String {
        let v = self.json();
        if let Some(m) = v["error"]["message"].as_str() {
            let code = v["error"]["code"].as_str().unwrap_or("error");
            return format!("{code}: {m}");
        }
        String::from_utf8_lossy(&self.body).chars().take(300).collect()
    }
}

/// The runtime's API socket, with a deadline shared by every request of one trial.
#[derive(Debug)]
pub struct Runtime<'a> {
    socket: &'a Path,
    deadline: Instant,
    timeout: Duration,
}

impl<'a> Runtime<'a> {
    /// A client for `socket` whose requests must all finish within `timeout` from now.
    pub fn new(socket: &'a Path, timeout: Duration) -> Self {
        Self { socket, deadline: Instant::now() + timeout, timeout }
    }

    fn remaining(&self, what: &'static str) -> Result<Duration, TrialError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TrialError::Timeout { what, timeout: self.timeout });
        }
        Ok(left)
    }

    fn request(
        &self,
        what: &'static str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Response, TrialError> {
        let mut stream = UnixStream::connect(self.socket)
            .map_err(|source| TrialError::RuntimeAbsent { socket: self.socket.to_path_buf(), source })?;
        let io_err = |e: std::io::Error| {
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                TrialError::Timeout { what, timeout: self.timeout }
            } else {
                TrialError::Protocol { what, reason: e.to_string() }
            }
        };
        let left = self.remaining(what)?;
        stream.set_write_timeout(Some(left)).map_err(io_err)?;
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nUser-Agent: outpost-updater\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(io_err)?;

        // Every read is bounded by what is left of the deadline.
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let read_line = |reader: &mut BufReader<UnixStream>, line: &mut String| -> Result<(), TrialError> {
            reader.get_ref().set_read_timeout(Some(self.remaining(what)?)).map_err(io_err)?;
            line.clear();
            let n = reader.by_ref().take(16 * 1024).read_line(line).map_err(io_err)?;
            if n == 0 {
                return Err(TrialError::Protocol {
                    what,
                    reason: "connection closed before the answer".into(),
                });
            }
            Ok(())
        };
        read_line(&mut reader, &mut line)?;
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or_else(|| {
            TrialError::Protocol { what, reason: format!("bad status line {:?}", line.trim_end()) }
        })?;
        let (mut length, mut chunked) = (None, false);
        loop {
            read_line(&mut reader, &mut line)?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((k, v)) = trimmed.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse::<usize>().ok();
                } else if k == "transfer-encoding" {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                read_line(&mut reader, &mut line)?;
                let size =
                    line.trim_end().split(';').next().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
                let size =
                    size.ok_or_else(|| TrialError::Protocol { what, reason: "bad chunk size".into() })?;
                if size == 0 {
                    break;
                }
                if body.len() + size > MAX_BODY {
                    return Err(TrialError::Protocol { what, reason: "answer too large".into() });
                }
                let start = body.len();
                body.resize(start + size, 0);
                reader.get_ref().set_read_timeout(Some(self.remaining(what)?)).map_err(io_err)?;
                reader.read_exact(&mut body[start..]).map_err(io_err)?;
                read_line(&mut reader, &mut line)?; // the CRLF after the chunk
            }
        } else {
            let cap = length.unwrap_or(MAX_BODY).min(MAX_BODY);
            reader.get_ref().set_read_timeout(Some(self.remaining(what)?)).map_err(io_err)?;
            reader.take(cap as u64).read_to_end(&mut body).map_err(io_err)?;
            if length.is_some_and(|l| body.len() < l) {
                return Err(TrialError::Protocol { what, reason: "connection closed mid-answer".into() });
            }
        }
        Ok(Response { status, body })
    }

    /// Sends a request, retrying while the runtime answers 503 (queue full, model loading).
    fn request_retrying(
        &self,
        what: &'static str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Response, TrialError> {
        loop {
            let response = self.request(what, method, path, body)?;
            if response.status != 503 {
                return Ok(response);
            }
            let left = self.remaining(what)?;
            std::thread::sleep(BUSY_RETRY.min(left));
        }
    }

    /// `POST /admin/reload`: the runtime loads `current` again (keeping the old model on failure).
    pub fn reload(&self) -> Result<(), TrialError> {
        let r = self.request_retrying("POST /admin/reload", "POST", "/admin/reload", None)?;
        if r.status != 200 {
            return Err(TrialError::LoadFailed { status: r.status, message: r.message() });
        }
        Ok(())
    }

    /// The full trial: reload, `/v1/models` reports `version` (and `sha256` when it names one),
    /// and a one-token chat completion answers 200.
    pub fn trial(&self, version: &str, sha256: &str) -> Result<(), TrialError> {
        self.reload()?;
        crate::update::crash_point("trial");
        let r = self.request_retrying("GET /v1/models", "GET", "/v1/models", None)?;
        let model = &r.json()["data"][0];
        let found = model["version"].as_str();
        let sha_ok = model["sha256"].as_str().is_none_or(|s| s == sha256);
        if r.status != 200 || found != Some(version) || !sha_ok {
            return Err(TrialError::WrongVersion {
                expected: version.to_owned(),
                found: found.map(str::to_owned),
            });
        }
        let chat = r#"{"messages":[{"role":"user","content":"ping"}],"max_tokens":1}"#;
        let r =
            self.request_retrying("POST /v1/chat/completions", "POST", "/v1/chat/completions", Some(chat))?;
        if r.status != 200 {
            return Err(TrialError::GenerationFailed { status: r.status, message: r.message() });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A server answering each connection with the next canned response.
    fn serve(answers: Vec<String>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("rt.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        (dir, socket)
    }

    fn answer(status: &str, body: &str) -> String {
        format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len())
    }

    #[test]
    fn a_passing_trial_and_each_failure() {
        let ok_reload = answer("200 OK", r#"{"status":"reloaded"}"#);
        // Chunked, split inside the JSON.
        let models = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1b\r\n{\"data\":[{\"version\":\"2.0.0\"\r\n3\r\n}]}\r\n0\r\n\r\n".to_owned();
        let chat = answer("200 OK", "{}");
        let (_d, sock) = serve(vec![ok_reload.clone(), models.clone(), chat]);
        Runtime::new(&sock, Duration::from_secs(5)).trial("2.0.0", "ab").unwrap();

        let (_d, sock) = serve(vec![ok_reload.clone(), models]);
        let err = Runtime::new(&sock, Duration::from_secs(5)).trial("3.0.0", "ab").unwrap_err();
        assert!(matches!(err, TrialError::WrongVersion { .. }), "{err}");

        let busy = answer("503 Service Unavailable", "{}");
        let failed =
            answer("500 Internal Server Error", r#"{"error":{"code":"model_load_failed","message":"bad"}}"#);
        let (_d, sock) = serve(vec![busy, failed]);
        let err = Runtime::new(&sock, Duration::from_secs(5)).trial("2.0.0", "ab").unwrap_err();
        assert!(err.to_string().contains("model_load_failed: bad"), "{err}");

        let (_d, sock) = serve(vec![
            ok_reload,
            answer("200 OK", r#"{"data":[{"version":"2.0.0"}]}"#),
            answer("400 Bad Request", "{}"),
        ]);
        let err = Runtime::new(&sock, Duration::from_secs(5)).trial("2.0.0", "ab").unwrap_err();
        assert!(matches!(err, TrialError::GenerationFailed { status: 400, .. }), "{err}");

        let err =
            Runtime::new(Path::new("/nonexistent/rt.sock"), Duration::from_secs(1)).reload().unwrap_err();
        assert!(err.is_runtime_absent(), "{err}");
    }

    #[test]
    fn a_silent_runtime_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("rt.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let hold = std::thread::spawn(move || {
            let conn = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop(conn);
        });
        let started = Instant::now();
        let err = Runtime::new(&socket, Duration::from_millis(300)).reload().unwrap_err();
        assert!(matches!(err, TrialError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_millis(700));
        hold.join().unwrap();
    }
}
