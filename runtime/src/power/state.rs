//! The power signal as plain values: where power comes from, the battery level, and the power
//! mode derived from them ([`super::PowerConfig::mode`]). [`super::spawn_monitor`] reads them
//! from sysfs; [`crate::policy`] decides on them.

use serde::Serialize;

/// Where the board's power comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerSource {
    /// Mains (AC adapter, USB power), or no battery at all.
    Mains,
    /// Running on battery.
    Battery,
}

/// The power signal: source, battery level and charging state.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PowerState {
    /// Mains or battery.
    pub source: PowerSource,
    /// Battery capacity in percent (0–100), if there is a battery.
    pub level: Option<u8>,
    /// The battery is charging.
    pub charging: bool,
}

impl PowerState {
    /// No battery: on mains.
    pub const MAINS: Self = Self { source: PowerSource::Mains, level: None, charging: false };
}

/// How hard the board may work, from the power state and `[power]` thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerMode {
    /// On mains or charging: full local limits.
    High,
    /// On battery above the low threshold.
    Balanced,
    /// On battery below the low threshold: spare the battery, prefer the cloud.
    Low,
}
