//! Fetching releases over HTTP(S): the manifest (capped at [`MAX_MANIFEST_BYTES`]) and artifacts
//! (resumable downloads into the store, capped at the manifest's size and hashed as they stream
//! in, see [`download`]).
//!
//! A small blocking client (ureq, rustls with ring): the updater is synchronous, and every wait
//! is bounded: `connect_timeout` for TCP and TLS, `read_timeout` for the response's headers and
//! for each read of its body, `min_rate` over each `read_timeout` window. Failures that another
//! attempt may cure (a dropped connection, a timeout, HTTP 5xx, 408, 429) are retried up to
//! `retries` times with exponential backoff and jitter; other 4xx, TLS failures and bytes that
//! contradict the manifest are not.
//!
//! HTTPS trusts the system's roots (`rustls-native-certs`) plus `ca_file`.

mod download;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

pub use download::{download, remove_dir_if_empty, Download, Downloaded, Progress};

use crate::manifest::MAX_MANIFEST_BYTES;

/// The longest pause between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How the updater talks HTTP; from `[updater]` (see [`crate::config::UpdaterConfig`]).
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// TCP connect and TLS handshake limit.
    pub connect_timeout: Duration,
    /// Limit on waiting for headers and on each body read; also the `min_rate` window.
    pub read_timeout: Duration,
    /// Slowest accepted transfer in bytes per second over a `read_timeout` window (0: off).
    pub min_rate: u64,
    /// Retries of a failed request within one call.
    pub retries: u32,
    /// First pause between retries (doubling, jittered, capped at 5 min).
    pub retry_backoff: Duration,
    /// CA certificates (DER) trusted besides the system's roots.
    pub ca_certs: Vec<Vec<u8>>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            min_rate: 1024,
            retries: 5,
            retry_backoff: Duration::from_secs(2),
            ca_certs: Vec::new(),
        }
    }
}

/// A request or download that failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not an absolute `http(s)://` URL.
    #[error("{url:?} is not a usable URL: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The request failed before a response arrived (DNS, connect, TLS, timeout, protocol).
    #[error("cannot fetch {url}: {source}")]
    Request {
        /// The URL.
        url: String,
        /// ureq's error.
        source: ureq::Error,
    },
    /// The server answered with an error status.
    #[error("cannot fetch {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// Reading the body failed (connection dropped, read timeout).
    #[error("reading {url} failed after {got} bytes: {source}")]
    Body {
        /// The URL.
        url: String,
        /// Bytes of this response received before the failure.
        got: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The connection ended before all the bytes came.
    #[error("{url}: the connection ended after {got} of {expected} bytes")]
    Truncated {
        /// The URL.
        url: String,
        /// Bytes of the file on disk.
        got: u64,
        /// Bytes declared.
        expected: u64,
    },
    /// The server sent bytes more slowly than `min_rate`.
    #[error("{url}: {rate} bytes/s over the last {window:?}, below min_rate {min_rate}")]
    TooSlow {
        /// The URL.
        url: String,
        /// The measured rate.
        rate: u64,
        /// The window.
        window: Duration,
        /// The configured floor.
        min_rate: u64,
    },
    /// The server sent (or announced) more bytes than the manifest declares; it was cut off.
    #[error("{url}: more than the {declared} bytes declared")]
    TooLong {
        /// The URL.
        url: String,
        /// The declared size.
        declared: u64,
    },
    /// The server offers a body whose length contradicts the manifest.
    #[error("{url}: the server offers {offered} bytes, {expected} expected")]
    Length {
        /// The URL.
        url: String,
        /// Content-Length (or the total in Content-Range).
        offered: u64,
        /// What the manifest and the bytes on disk call for.
        expected: u64,
    },
    /// A 206 answer whose `Content-Range` is not the range asked for; the partial file is
    /// dropped and the next attempt asks for the whole file.
    #[error("{url}: asked for bytes {requested}- of {size}, the server sent Content-Range {value:?}")]
    ContentRange {
        /// The URL.
        url: String,
        /// The header's value.
        value: String,
        /// The first byte asked for.
        requested: u64,
        /// The declared size.
        size: u64,
    },
    /// The downloaded bytes do not hash to the declared SHA-256.
    #[error("{url}: sha256 {got}, {declared} declared{}", if *.resumed { " (resumed download; trying once more from the start)" } else { "" })]
    Hash {
        /// The URL.
        url: String,
        /// The hash of the bytes received.
        got: String,
        /// The declared hash.
        declared: String,
        /// Whether part of the file came from an earlier attempt (then it is fetched again whole).
        resumed: bool,
    },
    /// The manifest is larger than [`MAX_MANIFEST_BYTES`].
    #[error("{url}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge {
        /// The URL.
        url: String,
    },
    /// A local file step failed.
    #[error("cannot {op} {path}: {source}")]
    File {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Every attempt failed; the last failure.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last one's error.
        last: Box<FetchError>,
    },
    /// Stopped on request (SIGTERM); a partial download is kept and resumed next time.
    #[error("stopped before the transfer finished")]
    Cancelled,
}

impl FetchError {
    /// Whether another attempt may succeed (a retry now, or the next check after retries).
    pub fn is_transient(&self) -> bool {
        match self {
            // rustls refusing the server's certificate reaches ureq as an I/O error.
            Self::Request { source: ureq::Error::Io(e), .. } => {
                e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).is_none()
            }
            Self::Request { source, .. } => !matches!(
                source,
                ureq::Error::Rustls(_)
                    | ureq::Error::Tls(_)
                    | ureq::Error::Pem(_)
                    | ureq::Error::BadUri(_)
                    | ureq::Error::Http(_)
                    | ureq::Error::TooManyRedirects
                    | ureq::Error::RedirectFailed
                    | ureq::Error::InvalidProxyUrl
            ),
            Self::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            Self::Body { .. } | Self::Truncated { .. } | Self::TooSlow { .. } | Self::ContentRange { .. } => {
                true
            }
            Self::Hash { resumed, .. } => *resumed,
            Self::GaveUp { last, .. } => last.is_transient(),
            Self::Url { .. }
            | Self::TooLong { .. }
            | Self::Length { .. }
            | Self::ManifestTooLarge { .. }
            | Self::File { .. }
            | Self::Cancelled => false,
        }
    }
}

/// Checks that `url` is an absolute `http://` or `https://` URL with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("must start with http:// or https://".into());
    }
    let uri: ureq::http::Uri = url.parse().map_err(|e: ureq::http::uri::InvalidUri| e.to_string())?;
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(())
}

/// Whether a command-line source names a URL rather than a file.
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// The URL of `name` beside the manifest at `manifest_url` (its query and fragment dropped).
/// `name` is a plain file name (checked by [`crate::verify`]), so it needs no escaping.
pub fn sibling_url(manifest_url: &str, name: &str) -> String {
    let base = manifest_url.split(['?', '#']).next().unwrap_or(manifest_url);
    let dir = match base.rfind('/') {
        // `https://host` has no path: the slashes found are the scheme's.
        Some(i) if i > base.find("://").map_or(0, |s| s + 2) => &base[..=i],
        _ => return format!("{base}/{name}"),
    };
    format!("{dir}{name}")
}

/// Reads a PEM file of CA certificates; the error says why it is unusable.
pub fn read_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c.der().to_vec()),
            Ok(_) => {}
            Err(e) => return Err(format!("{} is not valid PEM: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// An HTTP client with the configured limits, retries and trust, and an optional stop flag.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    opts: HttpOptions,
    cancel: Option<Arc<AtomicBool>>,
}

impl Client {
    /// A client for `opts` trusting the system's roots plus `opts.ca_certs`.
    pub fn new(opts: &HttpOptions) -> Self {
        // ureq with `rustls-no-provider` uses the process's default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let native = rustls_native_certs::load_native_certs();
        for err in &native.errors {
            tracing::debug!(%err, "cannot load a system CA certificate");
        }
        let mut roots: Vec<Certificate<'static>> =
            native.certs.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
        roots.extend(opts.ca_certs.iter().map(|der| Certificate::from_der(der).to_owned()));
        let tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(roots))).build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_send_request(Some(opts.connect_timeout))
            .timeout_recv_response(Some(opts.read_timeout))
            .timeout_per_read(Some(opts.read_timeout))
            .max_redirects(5)
            .user_agent(concat!("outpost-updater/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build();
        Self { agent: ureq::Agent::new_with_config(config), opts: opts.clone(), cancel: None }
    }

    /// Stops transfers and retry pauses soon after `flag` is set (they return
    /// [`FetchError::Cancelled`]).
    pub fn with_cancel(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    pub(crate) fn options(&self) -> &HttpOptions {
        &self.opts
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Sends a GET (with `Range: bytes=FROM-` when `from` is given).
    pub(crate) fn get(
        &self,
        url: &str,
        from: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>, FetchError> {
        check_url(url).map_err(|reason| FetchError::Url { url: url.to_owned(), reason })?;
        let mut req = self.agent.get(url);
        if let Some(from) = from {
            req = req.header("Range", format!("bytes={from}-"));
        }
        req.call().map_err(|source| FetchError::Request { url: url.to_owned(), source })
    }

    /// Runs `attempt` until it succeeds, fails for good, or `retries` retries failed, pausing
    /// between attempts (exponential backoff with jitter).
    pub(crate) fn with_retries<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let mut tries = 0u32;
        loop {
            if self.cancelled() {
                return Err(FetchError::Cancelled);
            }
            tries += 1;
            match attempt() {
                Ok(v) => return Ok(v),
                Err(err) if err.is_transient() && tries <= self.opts.retries && !self.cancelled() => {
                    let pause = backoff(self.opts.retry_backoff, tries - 1);
                    tracing::warn!(%err, attempt = tries, retry_in = ?pause, "{what} failed; retrying");
                    self.sleep(pause)?;
                }
                Err(err) if tries > 1 && !matches!(err, FetchError::Cancelled) => {
                    return Err(FetchError::GaveUp { attempts: tries, last: Box::new(err) })
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn sleep(&self, pause: Duration) -> Result<(), FetchError> {
        let until = Instant::now() + pause;
        while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            if self.cancelled() {
                return Err(FetchError::Cancelled);
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        Ok(())
    }

    /// Fetches a manifest: at most [`MAX_MANIFEST_BYTES`], with retries.
    pub fn fetch_manifest(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        self.with_retries("fetching the manifest", || {
            let resp = self.get(url, None)?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(FetchError::Status { url: url.to_owned(), status });
            }
            if resp.body().content_length().is_some_and(|n| n > MAX_MANIFEST_BYTES) {
                return Err(FetchError::ManifestTooLarge { url: url.to_owned() });
            }
            let mut bytes = Vec::new();
            let mut body = resp.into_body().into_reader().take(MAX_MANIFEST_BYTES + 1);
            body.read_to_end(&mut bytes).map_err(|source| FetchError::Body {
                url: url.to_owned(),
                got: bytes.len() as u64,
                source,
            })?;
            if bytes.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(FetchError::ManifestTooLarge { url: url.to_owned() });
            }
            Ok(bytes)
        })
    }
}

/// The pause before retry number `n + 1`: `first × 2ⁿ` (at most [`MAX_BACKOFF`]), drawn at random
/// between half and all of it so that boards failing together do not retry together.
pub fn backoff(first: Duration, n: u32) -> Duration {
    let full = first.saturating_mul(1u32 << n.min(20)).min(MAX_BACKOFF);
    full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sibling_urls() {
        assert_eq!(sibling_url("https://h/a/b/manifest.json", "x.zst"), "https://h/a/b/x.zst");
        assert_eq!(sibling_url("https://h/a/manifest.json?sig=1#f", "x"), "https://h/a/x");
        assert_eq!(sibling_url("http://h:8080/manifest.json", "x"), "http://h:8080/x");
        assert_eq!(sibling_url("http://h", "x"), "http://h/x");
        assert_eq!(sibling_url("http://h/", "x"), "http://h/x");
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://updates.example.com/m.json").is_ok());
        assert!(check_url("http://127.0.0.1:80/m.json").is_ok());
        assert!(check_url("ftp://h/m.json").is_err());
        assert!(check_url("https:///m.json").is_err());
        assert!(check_url("https://a b/").is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let first = Duration::from_secs(2);
        for n in 0..4 {
            let full = first * (1 << n);
            let d = backoff(first, n);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
        assert!(backoff(first, 40) <= MAX_BACKOFF);
    }

    #[test]
    fn transient_or_not() {
        let status = |status| FetchError::Status { url: "u".into(), status };
        assert!(status(503).is_transient() && status(429).is_transient() && status(408).is_transient());
        assert!(!status(404).is_transient() && !status(403).is_transient());
        assert!(!FetchError::TooLong { url: "u".into(), declared: 1 }.is_transient());
        let hash =
            |resumed| FetchError::Hash { url: "u".into(), got: "a".into(), declared: "b".into(), resumed };
        assert!(hash(true).is_transient() && !hash(false).is_transient());
        let gave_up = FetchError::GaveUp { attempts: 3, last: Box::new(status(502)) };
        assert!(gave_up.is_transient());
    }
}
