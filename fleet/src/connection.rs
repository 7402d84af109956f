//! How the CLI reaches the broker: the daemons' `[mqtt]` keys as flags, or a TOML file with an
//! `[mqtt]` section (`--config`, e.g. the operator's), flags overriding the file. Both go
//! through the daemons' own [`MqttConfig`] type and its checks, so a key means the same thing
//! everywhere.

use std::path::{Path, PathBuf};

use outpost_common::mqtt::{MqttConfig, MqttSettings};
use serde::Deserialize;

use crate::error::FleetError;

/// The device id the checks see: the CLI is no device, but `[mqtt]`'s checks want one.
const OPERATOR_ID: &str = "outpost-fleet";

/// Connection flags, named after the `[mqtt]` keys they set.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConnectionArgs {
    /// A TOML file whose `[mqtt]` section says how to connect (other sections are ignored).
    #[arg(long, global = true, env = "OUTPOST_FLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The broker: `mqtt://host[:port]` or `mqtts://host[:port]`.
    #[arg(long, global = true, env = "OUTPOST_FLEET_URL")]
    pub url: Option<String>,
    /// User name for password authentication.
    #[arg(long, global = true)]
    pub username: Option<String>,
    /// File holding the password.
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the broker's certificate.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the operator's TLS client certificate.
    #[arg(long, global = true, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's key.
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// The first topic level(s) (default `outpost`).
    #[arg(long, global = true)]
    pub topic_prefix: Option<String>,
}

impl ConnectionArgs {
    /// The `[mqtt]` table: the file's, then the flags over it.
    fn table(&self) -> Result<toml::Table, FleetError> {
        let mut table = match &self.config {
            Some(path) => mqtt_section(path)?,
            None => toml::Table::new(),
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        for (key, value) in [
            ("url", self.url.clone()),
            ("username", self.username.clone()),
            ("password_file", path(&self.password_file)),
            ("ca_file", path(&self.ca_file)),
            ("cert_file", path(&self.cert_file)),
            ("key_file", path(&self.key_file)),
            ("topic_prefix", self.topic_prefix.clone()),
        ] {
            if let Some(value) = value {
                table.insert(key.to_owned(), toml::Value::String(value));
            }
        }
        // A device's config may be given: its identity and state are not the operator's.
        for key in ["device_id", "groups", "state_dir"] {
            table.remove(key);
        }
        table.insert("device_id".into(), toml::Value::String(OPERATOR_ID.into()));
        Ok(table)
    }

    /// The checked settings.
    pub fn settings(&self) -> Result<MqttSettings, FleetError> {
        let table = self.table()?;
        if !table.contains_key("url") {
            return Err(FleetError::Settings {
                key: "url".into(),
                reason: "no broker: give --url, or --config with a file whose [mqtt] sets url".into(),
            });
        }
        let config = MqttConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| FleetError::Settings { key: "[mqtt]".into(), reason: e.message().to_owned() })?;
        config
            .check(Path::new("/nonexistent"))
            .map_err(|(key, reason)| FleetError::Settings { key: key.to_owned(), reason })
    }
}

/// The `[mqtt]` table of the TOML file at `path`.
fn mqtt_section(path: &Path) -> Result<toml::Table, FleetError> {
    let err = |reason: String| FleetError::ReadConfig { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut file: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.message().to_owned()))?;
    match file.remove("mqtt") {
        Some(toml::Value::Table(t)) => Ok(t),
        Some(_) => Err(err("`mqtt` is not a table".into())),
        None => Err(err("it has no [mqtt] section".into())),
    }
}

/// A client id no other client has: the broker disconnects the older of two clients with the
/// same id, so two operators (or two `outpost-fleet` processes) must not share one.
pub fn client_id() -> String {
    format!("{OPERATOR_ID}-{}", crate::random_hex(6))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_device_keys_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("operator.toml");
        std::fs::write(
            &file,
            "[updater]\nstore = \"/x\"\n[mqtt]\nurl = \"mqtt://file-broker\"\ndevice_id = \"pi-1\"\n\
             groups = [\"g\"]\ntopic_prefix = \"acme\"\nkeepalive = \"10s\"\n",
        )
        .unwrap();
        let args = ConnectionArgs { config: Some(file.clone()), ..ConnectionArgs::default() };
        let s = args.settings().unwrap();
        assert_eq!((s.host.as_str(), s.port, s.config.topic_prefix.as_str()), ("file-broker", 1883, "acme"));
        assert_eq!(s.device_id, OPERATOR_ID);
        assert!(s.config.groups.is_empty());
        assert_eq!(s.config.keepalive, std::time::Duration::from_secs(10));
        let args = ConnectionArgs {
            url: Some("mqtt://flag-broker:1999".into()),
            topic_prefix: Some("other".into()),
            ..args
        };
        let s = args.settings().unwrap();
        assert_eq!((s.host.as_str(), s.port, s.config.topic_prefix.as_str()), ("flag-broker", 1999, "other"));
    }

    #[test]
    fn bad_settings_name_their_key() {
        let none = ConnectionArgs::default();
        assert!(matches!(none.settings(), Err(FleetError::Settings { key, .. }) if key == "url"));
        let bad = ConnectionArgs { url: Some("http://b".into()), ..ConnectionArgs::default() };
        assert!(matches!(bad.settings(), Err(FleetError::Settings { key, .. }) if key == "url"));
        let plain_ca = ConnectionArgs {
            url: Some("mqtt://b".into()),
            ca_file: Some("/etc/hostname".into()),
            ..ConnectionArgs::default()
        };
        assert!(matches!(plain_ca.settings(), Err(FleetError::Settings { key, .. }) if key == "url"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.toml");
        std::fs::write(&file, "[model]\npath = \"/m\"\n").unwrap();
        let no_section = ConnectionArgs { config: Some(file), ..ConnectionArgs::default() };
        assert!(matches!(no_section.settings(), Err(FleetError::ReadConfig { .. })));
        assert!(client_id().starts_with("outpost-fleet-") && client_id() != client_id());
    }
}
