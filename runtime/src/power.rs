//! The power signal: battery level and charging state from sysfs `power_supply`.
//!
//! (Interface fixed; the body is filled in by the power work.)

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[power]`: where the battery is read and how its level maps to power modes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerConfig {
    /// The sysfs `power_supply` class directory (a test points it at a fake tree).
    pub supply_root: PathBuf,
    /// How often the battery is read.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for PowerConfig {
    fn default() -> Self {
        Self { supply_root: PathBuf::from("/sys/class/power_supply"), poll_interval: Duration::from_secs(15) }
    }
}

impl PowerConfig {
    /// Checks ranges and consistency; errors name the key inside the section.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        Ok(())
    }
}
