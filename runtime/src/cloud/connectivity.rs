//! Whether the cloud can be reached, as routing reads it: [`super::Cloud::connectivity`] derives
//! it from the probe and the circuit breaker; [`crate::policy`] decides on it.

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
