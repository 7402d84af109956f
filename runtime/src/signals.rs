//! The device's signals that routing depends on, as plain values: where power comes from and
//! whether the cloud can be reached. [`crate::power`] reads them from sysfs and
//! [`crate::cloud`] from probes and real calls; [`crate::policy`] decides on them.

use serde::Serialize;

/// Whether the cloud endpoint can be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Connectivity {
    /// The last probe or call reached the endpoint.
    Online,
    /// The endpoint cannot be reached (probe failed, or the circuit breaker is open).
    Offline,
    /// Nothing is known yet (no probe has finished since start).
    Unknown,
    /// No `[cloud] url` is configured: there is no cloud to reach.
    NotConfigured,
}

impl Connectivity {
    /// A cloud call may be attempted: online, or not known to be offline.
    pub fn may_call(self) -> bool {
        matches!(self, Self::Online | Self::Unknown)
    }
}

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
