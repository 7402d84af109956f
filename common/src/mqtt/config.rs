//! `[mqtt]`, the same section in both daemons' configs, and the fleet CLI's connection options.
//! No `[mqtt]` section: no fleet control.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::fleet::{check_segment, Component, Topics};

/// `[mqtt]`: how a daemon reaches the fleet's broker.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (TLS, default 8883).
    pub url: String,
    /// This board's id in topics and client ids. Default: the host name.
    #[serde(default)]
    pub device_id: Option<String>,
    /// PEM file of the CA(s) that signed the broker's certificate. Unset with `mqtts://`: the
    /// system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of this device's TLS client certificate (with `key_file`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// User name for password authentication (or for brokers that want one with certificates).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (read at start; never logged).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// MQTT keep-alive: the broker declares the device gone (and publishes its last will) after
    /// 1.5 × this without traffic.
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// The first topic level(s).
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Groups whose commands this device takes (`P/group/<g>/C/cmd/+`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// How often the runtime publishes telemetry and both republish their status.
    #[serde(default = "default_telemetry_interval", with = "humantime_serde")]
    pub telemetry_interval: Duration,
    /// Telemetry reports kept on disk while the broker cannot be reached (oldest dropped first).
    #[serde(default = "default_telemetry_buffer")]
    pub telemetry_buffer: usize,
    /// Where the seen job ids and the telemetry buffer are kept. Default: a `fleet/` directory
    /// in the daemon's state directory.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}
fn default_prefix() -> String {
    "outpost".into()
}
fn default_telemetry_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_telemetry_buffer() -> usize {
    1440
}

/// Whether the connection is encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `mqtt://`: plain TCP.
    Plain,
    /// `mqtts://`: TLS.
    Tls,
}

/// `[mqtt]` checked: the broker's address, the device id, the state directory.
#[derive(Clone, Debug)]
pub struct MqttSettings {
    /// The section as written.
    pub config: MqttConfig,
    /// Plain or TLS.
    pub scheme: Scheme,
    /// The broker's host.
    pub host: String,
    /// The broker's port.
    pub port: u16,
    /// The device id (configured or the host name).
    pub device_id: String,
    /// Where agent state lives.
    pub state_dir: PathBuf,
}

impl MqttSettings {
    /// The topics of `component` on this device.
    pub fn topics(&self, component: Component) -> Topics {
        Topics::new(&self.config.topic_prefix, &self.device_id, component)
            .expect("prefix and device id were checked by MqttConfig::check")
    }
}

/// Splits `mqtt[s]://host[:port]`.
pub fn parse_url(url: &str) -> Result<(Scheme, String, u16), String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (Scheme::Tls, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (Scheme::Plain, rest)
    } else {
        return Err(format!("`{url}` must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') {
        return Err(format!("`{url}`: give only a host and port (credentials go in username/password_file)"));
    }
    let default_port = if scheme == Scheme::Tls { 8883 } else { 1883 };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
            let port = port.parse::<u16>().map_err(|_| format!("`{url}`: bad port `{port}`"))?;
            (host.trim_start_matches('[').trim_end_matches(']').to_owned(), port)
        }
        _ => (rest.to_owned(), default_port),
    };
    if host.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    Ok((scheme, host, port))
}

/// The host name, for the default device id.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl MqttConfig {
    /// Checks the section; `default_state_dir` is the daemon's choice when `state_dir` is unset.
    /// An error is `(key, reason)` with the key relative to `[mqtt]`.
    pub fn check(&self, default_state_dir: &std::path::Path) -> Result<MqttSettings, (&'static str, String)> {
        let (scheme, host, port) = parse_url(&self.url).map_err(|e| ("url", e))?;
        let device_id = match &self.device_id {
            Some(id) => id.clone(),
            None => {
                host_name().ok_or(("device_id", "is unset and the host name cannot be read".to_owned()))?
            }
        };
        Topics::new(&self.topic_prefix, &device_id, Component::Runtime).map_err(|e| {
            if e.starts_with("topic_prefix") {
                ("topic_prefix", e)
            } else {
                ("device_id", e)
            }
        })?;
        for g in &self.groups {
            check_segment("a group", g).map_err(|e| ("groups", e))?;
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(("cert_file", "cert_file and key_file go together".into()));
        }
        if scheme == Scheme::Plain && (self.cert_file.is_some() || self.ca_file.is_some()) {
            return Err(("url", "ca_file/cert_file need an mqtts:// url".into()));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err(("password_file", "needs a username".into()));
        }
        for (key, file) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("password_file", &self.password_file),
        ] {
            if let Some(path) = file {
                if let Err(err) = std::fs::metadata(path) {
                    return Err((key, format!("cannot read {}: {err}", path.display())));
                }
            }
        }
        if !(Duration::from_secs(5)..=Duration::from_secs(3600)).contains(&self.keepalive) {
            return Err(("keepalive", "must be between 5s and 1h".into()));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(86400)).contains(&self.telemetry_interval) {
            return Err(("telemetry_interval", "must be between 1s and 1 day".into()));
        }
        if !(1..=1_000_000).contains(&self.telemetry_buffer) {
            return Err(("telemetry_buffer", "must be between 1 and 1000000".into()));
        }
        let state_dir = self.state_dir.clone().unwrap_or_else(|| default_state_dir.to_path_buf());
        Ok(MqttSettings { config: self.clone(), scheme, host, port, device_id, state_dir })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(text: &str) -> MqttConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn urls_and_defaults() {
        assert_eq!(parse_url("mqtt://b").unwrap(), (Scheme::Plain, "b".into(), 1883));
        assert_eq!(parse_url("mqtts://b.example:9000").unwrap(), (Scheme::Tls, "b.example".into(), 9000));
        assert_eq!(parse_url("mqtt://127.0.0.1:1884/").unwrap().2, 1884);
        assert!(parse_url("http://b").is_err());
        assert!(parse_url("mqtt://u:p@b").is_err());
        assert!(parse_url("mqtt://b:x").is_err());
        let c = config("url = \"mqtt://b\"\ndevice_id = \"pi-1\"\n");
        let s = c.check(std::path::Path::new("/var/lib/outpost/fleet")).unwrap();
        assert_eq!((s.device_id.as_str(), s.config.keepalive), ("pi-1", Duration::from_secs(30)));
        assert_eq!(s.topics(Component::Updater).status(), "outpost/pi-1/updater/status");
    }

    #[test]
    fn bad_values_name_their_key() {
        let dir = std::path::Path::new("/x");
        let key = |t: &str| config(t).check(dir).unwrap_err().0;
        assert_eq!(key("url = \"mqtt://b\"\ndevice_id = \"a/b\""), "device_id");
        assert_eq!(key("url = \"mqtt://b\"\ndevice_id = \"a\"\ngroups = [\"#\"]"), "groups");
        assert_eq!(key("url = \"mqtt://b\"\ndevice_id = \"a\"\ntopic_prefix = \"x/+\""), "topic_prefix");
        assert_eq!(key("url = \"mqtt://b\"\ndevice_id = \"a\"\ncert_file = \"/c\""), "cert_file");
        assert_eq!(
            key("url = \"mqtts://b\"\ndevice_id = \"a\"\nca_file = \"/nonexistent/ca.pem\""),
            "ca_file"
        );
        assert_eq!(key("url = \"mqtt://b\"\ndevice_id = \"a\"\nkeepalive = \"1s\""), "keepalive");
        assert!(toml::from_str::<MqttConfig>("url = \"mqtt://b\"\nkeep_alive = \"1s\"").is_err());
    }
}
