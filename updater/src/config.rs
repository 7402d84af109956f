//! Configuration: `[updater]` in one TOML file, typed and validated once. Every error names the
//! file, the key and the reason; `main` maps them to exit code 78 (`EX_CONFIG`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::keys::{self, TrustedKeys};

/// Where the updater looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/outpost/updater.toml";

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    updater: UpdaterConfig,
}

/// `[updater]`: where models live and whom to trust.
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
fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

/// A configuration that could not be loaded: which file, which key, why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key is missing, unknown, of the wrong type, or has an invalid value.
    #[error("config file {path}: key `{key}`: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The dotted key, e.g. `updater.threshold`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The validated settings, with the trusted keys loaded.
#[derive(Debug)]
pub struct Settings {
    /// The `[updater]` table as configured.
    pub updater: UpdaterConfig,
    /// The distinct trusted public keys, by key id.
    pub keys: TrustedKeys,
}

impl Settings {
    /// Reads, parses and validates `path`, and loads the trusted keys it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml_str(path, &text)
    }

    /// Parses and validates `text` as if it were the file `path`.
    pub fn from_toml_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let key_err = |key: &str, reason: String| ConfigError::Key {
            path: path.to_path_buf(),
            key: key.to_owned(),
            reason,
        };
        let de = toml::Deserializer::new(text);
        let file: File = serde_path_to_error::deserialize(de).map_err(|err| {
            let key = err.path().to_string();
            let message = err.into_inner().message().trim().to_owned();
            let key = if key == "." { "updater".to_owned() } else { key };
            // For an unknown field, name the field itself rather than its table.
            let key = match message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
                Some(field) if key.rsplit('.').next() != Some(field) => format!("{key}.{field}"),
                Some(_) => key,
                None => key,
            };
            key_err(&key, message)
        })?;
        let u = file.updater;
        if !u.store.is_absolute() {
            return Err(key_err("updater.store", "must be an absolute path".into()));
        }
        if u.runtime_socket.as_os_str().is_empty() {
            return Err(key_err("updater.runtime_socket", "must not be empty".into()));
        }
        if u.trial_timeout.is_zero() {
            return Err(key_err("updater.trial_timeout", "must be longer than zero".into()));
        }
        if !(1..=10).contains(&u.max_trials) {
            return Err(key_err("updater.max_trials", "must be between 1 and 10".into()));
        }
        if u.device_class.is_empty()
            || !u.device_class.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(key_err("updater.device_class", "must be non-empty, of [A-Za-z0-9._-]".into()));
        }
        if u.trusted_keys.is_empty() {
            return Err(key_err("updater.trusted_keys", "must name at least one public key file".into()));
        }
        let mut trusted = TrustedKeys::default();
        for (i, key_path) in u.trusted_keys.iter().enumerate() {
            let key = keys::read_public_key(key_path)
                .map_err(|e| key_err(&format!("updater.trusted_keys[{i}]"), e.to_string()))?;
            trusted.insert(key);
        }
        if u.threshold == 0 || u.threshold > trusted.len() {
            return Err(key_err(
                "updater.threshold",
                format!("must be between 1 and the number of distinct trusted keys ({})", trusted.len()),
            ));
        }
        Ok(Self { updater: u, keys: trusted })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn with_key() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        keys::keygen(dir.path()).unwrap();
        let p = dir.path().join("release.pub");
        (dir, p)
    }

    fn load(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml_str(Path::new("/etc/outpost/updater.toml"), text)
    }

    fn key_of(err: ConfigError) -> String {
        match err {
            ConfigError::Key { key, path, .. } => {
                assert_eq!(path, Path::new("/etc/outpost/updater.toml"));
                key
            }
            other => panic!("not a key error: {other}"),
        }
    }

    #[test]
    fn valid_config_loads_with_defaults() {
        let (_d, key) = with_key();
        let s = load(&format!(
            "[updater]\ntrusted_keys = [{key:?}]\ndevice_class = \"pi5-8g\"\n",
            key = key.display().to_string()
        ))
        .unwrap();
        assert_eq!(s.updater.store, Path::new("/var/lib/outpost/models"));
        assert_eq!(s.updater.threshold, 1);
        assert_eq!(s.keys.len(), 1);
        assert_eq!(s.updater.trial_timeout, Duration::from_secs(120));
        assert_eq!(s.updater.max_trials, 3);
        assert_eq!(s.updater.runtime_absent, RuntimeAbsent::Fail);
        let s = load(&format!(
            "[updater]\ntrusted_keys = [{key:?}]\ndevice_class = \"a\"\ntrial_timeout = \"90s\"\nmax_trials = 2\nruntime_absent = \"commit\"\n",
            key = key.display().to_string()
        ))
        .unwrap();
        assert_eq!(s.updater.trial_timeout, Duration::from_secs(90));
        assert_eq!(s.updater.max_trials, 2);
        assert_eq!(s.updater.runtime_absent, RuntimeAbsent::Commit);
    }

    #[test]
    fn errors_name_the_key() {
        let (_d, key) = with_key();
        let k = key.display().to_string();
        let cases = [
            (format!("[updater]\ntrusted_keys = [{k:?}]\n"), "updater"),
            (
                format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\nthreshold = \"x\"\n"),
                "updater.threshold",
            ),
            (
                format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\nbogus = 1\n"),
                "updater.bogus",
            ),
            (
                format!("[updater]\ntrusted_keys = [{k:?}, {k:?}]\ndevice_class = \"a\"\nthreshold = 2\n"),
                "updater.threshold",
            ),
            (format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a/b\"\n"), "updater.device_class"),
            (
                format!(
                    "[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\ntrial_timeout = \"soon\"\n"
                ),
                "updater.trial_timeout",
            ),
            (
                format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\nmax_trials = 0\n"),
                "updater.max_trials",
            ),
            (
                format!(
                    "[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\nruntime_absent = \"maybe\"\n"
                ),
                "updater.runtime_absent",
            ),
            (
                format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\nstore = \"rel\"\n"),
                "updater.store",
            ),
            (
                "[updater]\ntrusted_keys = [\"/nonexistent.pub\"]\ndevice_class = \"a\"\n".to_owned(),
                "updater.trusted_keys[0]",
            ),
        ];
        for (text, want) in cases {
            let err = load(&text).unwrap_err();
            let msg = err.to_string();
            assert_eq!(key_of(err), want, "{msg}");
        }
    }
}
