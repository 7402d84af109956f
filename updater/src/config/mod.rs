//! Configuration: `[updater]` in a base TOML file plus drop-ins in `updater.d/*.toml` beside it,
//! merged key by key in file-name order (`outpost_common::config`), typed and validated once into [`Settings`].
//! Every error names the file that set the key, the key and the reason; `main` maps them to exit
//! code 78 (`EX_CONFIG`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use outpost_common::config::{ConfigError, EXIT_CONFIG};
use outpost_common::config::{Merged, Sources};

/// The drop-in directory's name, beside the base file.
///
/// Not `config.d`: the runtime reads `config.d/` beside its own file (by default
/// `/etc/outpost/config.d`, the updater's default directory too) and refuses tables it does not
/// know, so each program keeps its own drop-in directory.
pub const DROP_IN_DIR: &str = "updater.d";

use crate::fetch::HttpOptions;
use crate::keys::{self, TrustedKeys};

/// Where the updater looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/outpost/updater.toml";

/// The files as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    updater: UpdaterConfig,
    /// Fleet control over MQTT: the same section as the runtime's.
    #[serde(default)]
    mqtt: Option<outpost_common::mqtt::MqttConfig>,
}

/// `[updater]`: where models live, whom to trust, where releases come from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdaterConfig {
    /// The model store: one directory per version under `versions/`, and `current`, the symlink
    /// the runtime loads `current/model.gguf` through.
    #[serde(default = "default_store")]
    pub store: PathBuf,
    /// Public keys (files written by `keygen`) whose signatures count toward `threshold`.
    pub trusted_keys: Vec<PathBuf>,
    /// How many distinct trusted keys must have signed a manifest.
    #[serde(default = "default_threshold")]
    pub threshold: usize,
    /// The runtime's Unix socket (for `/admin/reload` and the trial after a switch).
    #[serde(default = "default_socket")]
    pub runtime_socket: PathBuf,
    /// This board's class; a manifest must list it.
    pub device_class: String,
    /// How long the trial after a switch may take: `/admin/reload`, `/v1/models` reporting the
    /// new version and a one-token generation must all finish within it (e.g. `"60s"`, `"2m"`).
    #[serde(default = "default_trial_timeout", deserialize_with = "duration")]
    pub trial_timeout: Duration,
    /// Trials a new version gets before it is rolled back unconditionally. A trial that fails
    /// rolls back at once; this bounds the trials interrupted by a crash or reboot (counted in the
    /// journal), so a version that takes the board down during its trial is abandoned.
    #[serde(default = "default_max_trials")]
    pub max_trials: u32,
    /// What a trial does when nothing listens on `runtime_socket` (the runtime is not running):
    /// `"fail"` (default) counts it as a failed trial and switches back; `"commit"` commits the
    /// untried version (the runtime loads it when it starts). A first install, with no previous
    /// version to go back to, is committed either way.
    #[serde(default)]
    pub runtime_absent: RuntimeAbsent,
    /// The release channel's manifest, `http://` or `https://` (artifacts are fetched relative to
    /// it unless the manifest gives them an absolute URL). Required by `daemon`; the default
    /// source of `apply` when it is given none. Unset: no default.
    #[serde(default)]
    pub manifest_url: Option<String>,
    /// How often `daemon` fetches `manifest_url` (e.g. `"1h"`), each wait jittered by ±10 % so
    /// that a fleet does not ask at the same second. After a failed check (network down, server
    /// error) the next one comes sooner: 1 min, doubling, never later than this. Default `1h`.
    #[serde(default = "default_check_interval", deserialize_with = "duration")]
    pub check_interval: Duration,
    /// How long a TCP connection (and TLS handshake) to the release server may take. Default
    /// `30s`.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// The longest wait for a response's headers or for any single read of its body: a server
    /// that sends nothing for this long is dropped (and the download resumed on a new
    /// connection). Also the window over which `min_rate` is measured. Default `60s`.
    #[serde(default = "default_read_timeout", deserialize_with = "duration")]
    pub read_timeout: Duration,
    /// The slowest transfer accepted, in bytes per second, averaged over each `read_timeout`
    /// window of a download: a server trickling bytes more slowly is dropped like a silent one.
    /// `0` turns the check off. Default `1024`.
    #[serde(default = "default_min_rate")]
    pub min_rate: u64,
    /// How many times a failed request is retried within one check (a dropped connection, a
    /// timeout, HTTP 5xx, 408 or 429; never other 4xx). A download resumes where it stopped.
    /// Default `5`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The pause before the first retry; it doubles with each retry (at most 5 min), each pause
    /// drawn at random between half and all of it. Default `2s`.
    #[serde(default = "default_retry_backoff", deserialize_with = "duration")]
    pub retry_backoff: Duration,
    /// A PEM file of CA certificates trusted for `https://` besides the system's roots (for a
    /// release server with a private CA). Unset: the system's roots only.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `runtime_absent`: what a trial does when the runtime is not running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeAbsent {
    /// A failed trial: switch back to the previous version.
    #[default]
    Fail,
    /// Commit the new version without a trial.
    Commit,
}

fn default_store() -> PathBuf {
    PathBuf::from("/var/lib/outpost/models")
}
fn default_threshold() -> usize {
    1
}
fn default_socket() -> PathBuf {
    PathBuf::from("/run/outpost/outpost.sock")
}
fn default_trial_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_max_trials() -> u32 {
    3
}
fn default_check_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_min_rate() -> u64 {
    1024
}
fn default_retries() -> u32 {
    5
}
fn default_retry_backoff() -> Duration {
    Duration::from_secs(2)
}
fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

/// The validated settings, with the trusted keys and CA certificates loaded.
#[derive(Debug)]
pub struct Settings {
    /// The `[updater]` table as configured.
    pub updater: UpdaterConfig,
    /// The distinct trusted public keys, by key id.
    pub keys: TrustedKeys,
    /// How to fetch over HTTP(S).
    pub http: HttpOptions,
    /// `[mqtt]` checked; none without the section.
    pub mqtt: Option<outpost_common::mqtt::MqttSettings>,
    /// The base file (named by errors about keys no file set).
    path: PathBuf,
}

impl Settings {
    /// Reads `path` and the drop-ins in `updater.d/` beside it, then parses and validates them and
    /// loads the trusted keys and CA certificates they name.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_merged(&Merged::load(&Sources::new(path, true, DROP_IN_DIR))?)
    }

    /// Parses and validates `text` as if it were the whole configuration in `path`.
    pub fn from_toml_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_merged(&Merged::from_str(path, text)?)
    }

    /// `manifest_url`, or an error naming the key when a command needs it and it is unset.
    pub fn manifest_url(&self) -> Result<&str, ConfigError> {
        self.updater.manifest_url.as_deref().ok_or_else(|| ConfigError::Key {
            path: self.path.clone(),
            key: "updater.manifest_url".into(),
            reason: "is required here (no manifest given on the command line)".into(),
        })
    }

    fn from_merged(merged: &Merged) -> Result<Self, ConfigError> {
        let file: File = merged.deserialize()?;
        let u = file.updater.clone();
        let err = |key: &str, reason: &str| merged.key_error(&format!("updater.{key}"), reason);
        if !u.store.is_absolute() {
            return Err(err("store", "must be an absolute path"));
        }
        if u.runtime_socket.as_os_str().is_empty() {
            return Err(err("runtime_socket", "must not be empty"));
        }
        if u.trial_timeout.is_zero() {
            return Err(err("trial_timeout", "must be longer than zero"));
        }
        if !(1..=10).contains(&u.max_trials) {
            return Err(err("max_trials", "must be between 1 and 10"));
        }
        if u.device_class.is_empty()
            || !u.device_class.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(err("device_class", "must be non-empty, of [A-Za-z0-9._-]"));
        }
        if let Some(url) = &u.manifest_url {
            crate::fetch::check_url(url).map_err(|reason| err("manifest_url", &reason))?;
        }
        if u.check_interval < Duration::from_secs(1) || u.check_interval > Duration::from_secs(30 * 86400) {
            return Err(err("check_interval", "must be between 1s and 30 days"));
        }
        for (key, d) in [("connect_timeout", u.connect_timeout), ("read_timeout", u.read_timeout)] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return Err(err(key, "must be between 100ms and 1h"));
            }
        }
        if u.retries > 100 {
            return Err(err("retries", "must be at most 100"));
        }
        if u.retry_backoff.is_zero() || u.retry_backoff > Duration::from_secs(3600) {
            return Err(err("retry_backoff", "must be longer than zero and at most 1h"));
        }
        let ca_certs = match &u.ca_file {
            Some(path) => crate::fetch::read_ca_file(path).map_err(|reason| err("ca_file", &reason))?,
            None => Vec::new(),
        };
        if u.trusted_keys.is_empty() {
            return Err(err("trusted_keys", "must name at least one public key file"));
        }
        let mut trusted = TrustedKeys::default();
        for (i, key_path) in u.trusted_keys.iter().enumerate() {
            let key = keys::read_public_key(key_path)
                .map_err(|e| err(&format!("trusted_keys[{i}]"), &e.to_string()))?;
            trusted.insert(key);
        }
        if u.threshold == 0 || u.threshold > trusted.len() {
            return Err(err(
                "threshold",
                &format!("must be between 1 and the number of distinct trusted keys ({})", trusted.len()),
            ));
        }
        let http = HttpOptions {
            connect_timeout: u.connect_timeout,
            read_timeout: u.read_timeout,
            min_rate: u.min_rate,
            retries: u.retries,
            retry_backoff: u.retry_backoff,
            ca_certs,
        };
        let mqtt = match &file.mqtt {
            // Fleet state beside the store, which the updater owns.
            Some(m) => Some(
                m.check(&u.store.join(".fleet"))
                    .map_err(|(key, reason)| merged.key_error(&format!("mqtt.{key}"), reason))?,
            ),
            None => None,
        };
        Ok(Self { updater: u, keys: trusted, http, mqtt, path: merged.base().to_path_buf() })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
